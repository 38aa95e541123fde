"""The ``fit`` loop: epochs, chunks of steps, fast-forward on resume, stop conditions.

One object per ``fit`` call. It asks the trainer for chunks of steps
(``trainer.run_chunk``), feeds the metric aggregator, closes logging
intervals and dispatches the hooks in Lightning's order::

    on_train_begin
      on_epoch_begin
        on_train_batch_start (each batch of a chunk)  -> the compiled call
        on_log (at logging steps)  -> on_train_batch_end (each batch of the chunk)
      on_epoch_end
    on_train_end            (or on_exception, then the error is re-raised)

A chunk is 1 step, or up to ``steps_per_execution`` steps in one compiled
call; a chunk ends at ``max_steps``, at the epoch's end and at any step a
callback asks for (:meth:`Callback.next_boundary_step`: a checkpoint's save
steps), so stopping and saving land on the same steps whatever K is. A chunk
also ends at a logging step unless every callback lets logs lag
(:attr:`Callback.waits_for_logs` is False for all): then one call may span
several logging intervals, each still logged with its own steps' means, once
the next call is queued.
"""

from __future__ import annotations

import itertools
import signal
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jax

from artifex_rl.device_source import is_device_batch_source
from artifex_rl.events import Callback

if TYPE_CHECKING:
    from artifex_rl.trainer import Trainer


class StepView(Mapping):
    """Step ``i`` of fused ``(K,)`` metrics, sliced only when a callback reads it."""

    def __init__(self, stacked: Mapping[str, Any], index: int):
        self._stacked, self._index = stacked, index

    def __getitem__(self, key: str) -> Any:
        return self._stacked[key][self._index]

    def __iter__(self):
        return iter(self._stacked)

    def __len__(self) -> int:
        return len(self._stacked)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived during ``fit``; raised once the running chunk has finished.

    Callbacks see it in ``on_exception`` (the state is consistent: a checkpoint
    callback saves it), then ``on_train_end`` runs, then it propagates.
    """

    def __init__(self, signum: int, step: int):
        super().__init__(f"training interrupted by signal {signum} after step {step}")
        self.signum, self.step = signum, step


class _SignalCatcher:
    """Turns SIGINT/SIGTERM into a flag while installed (main thread only); a second one is the default."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalCatcher:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        for sig, handler in self._previous.items():  # a second signal acts at once
            signal.signal(sig, handler)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class FitLoop:
    """Runs ``trainer`` over ``dataloader`` until a stop condition holds."""

    def __init__(self, trainer: Trainer, dataloader: Iterable, max_steps: int | None, max_epochs: int | None):
        self.trainer = trainer
        self.dataloader = dataloader
        self.max_steps = max_steps
        self.max_epochs = max_epochs
        self.fuse_source = self._can_fuse_source(dataloader)
        self.signals = _SignalCatcher()
        # Callbacks that need the state right after particular steps (see chunk_size).
        self.boundaries = [
            cb.next_boundary_step for cb in trainer.callbacks
            if type(cb).next_boundary_step is not Callback.next_boundary_step
        ]
        k = trainer.config.steps_per_execution
        if k > 1 and not self.fuse_source and getattr(dataloader, "depends_on_policy", False):
            raise ValueError(
                f"{type(dataloader).__name__} makes its batches with the current policy "
                f"(depends_on_policy=True), so fit cannot read it {k} batches ahead "
                f"(steps_per_execution={k}): its batches would come from stale parameters. "
                "Use steps_per_execution=1, or a device source that fit can fuse into its step."
            )

    def _can_fuse_source(self, source: Any) -> bool:
        """A device source acting with this trainer's policy that knows its epoch length."""
        trainer = self.trainer
        if trainer.config.steps_per_execution <= 1 or not is_device_batch_source(source):
            return False
        owner = getattr(source, "policy_owner", getattr(source, "trainer", None))
        return owner is trainer and hasattr(source, "__len__")

    # ------------------------------------------------------------------ #
    def finished(self) -> bool:
        t = self.trainer
        if self.signals.signum is not None:
            raise TrainingInterrupted(self.signals.signum, t.global_step)
        return (
            t.should_stop
            or (self.max_steps is not None and t.global_step >= self.max_steps)
            or (self.max_epochs is not None and t.current_epoch >= self.max_epochs)
        )

    def run(self) -> None:
        t = self.trainer
        with self.signals:
            t.callbacks.dispatch("on_train_begin", t)
            while not self.finished():
                self.run_epoch()
        t.emit_log(force=True)
        t.callbacks.dispatch("on_train_end", t)

    def run_epoch(self) -> None:
        t = self.trainer
        epoch = t.current_epoch
        t.callbacks.dispatch("on_epoch_begin", t, epoch)
        if self.fuse_source:
            yielded = self._run_source_epoch() or t.batches_seen_in_epoch > 0
        else:
            yielded = self._run_loader_epoch() or t.batches_seen_in_epoch > 0
        if self.finished():
            return  # a stop inside the epoch: it completes (and on_epoch_end runs) on resume
        if not yielded:
            raise ValueError(
                f"the dataloader yielded no batches in epoch {epoch}; fit needs at least one "
                "batch per epoch (is it an exhausted iterator? pass a re-iterable object)"
            )
        t.current_epoch += 1
        t.batches_seen_in_epoch = 0
        t.emit_log()
        t.callbacks.dispatch("on_epoch_end", t, epoch, dict(t.callback_metrics))

    def _epoch_length(self) -> int | None:
        try:
            return len(self.dataloader)  # type: ignore[arg-type]
        except TypeError:
            return None

    def chunk_size(self, epoch_length: int | None = None) -> int:
        """Steps in the next call: it ends at ``max_steps``, the epoch's end, a callback's boundary step
        and, unless logs may lag, at a logging step."""
        t = self.trainer
        step = t.global_step
        size = t.config.steps_per_execution
        if not t.lag_logs:  # some callback acts on each interval's metrics before the next call
            log_every = t.config.log_every_n_steps
            size = min(size, log_every - step % log_every)
        if self.max_steps is not None:
            size = min(size, self.max_steps - step)
        if epoch_length is not None:
            size = min(size, epoch_length - t.batches_seen_in_epoch)
        for boundary in self.boundaries:
            target = boundary(t, step)
            if target is not None and target > step:
                size = min(size, target - step)
        return size

    def _run_loader_epoch(self) -> bool:
        t = self.trainer
        iterator = iter(self.dataloader)
        # Resuming mid-epoch: a dataloader that saves its own position
        # (state_dict) is already there; a plain iterable is fast-forwarded.
        if t.batches_seen_in_epoch and not hasattr(self.dataloader, "state_dict"):
            for _ in range(t.batches_seen_in_epoch):
                next(iterator, None)
        yielded = False
        if t.config.steps_per_execution == 1:
            # The hot loop of small models: as little Python per step as possible.
            start_hook = t.callbacks.has_listeners("on_train_batch_start")
            if self.finished():
                return yielded
            for batch in iterator:
                yielded = True
                first = t.global_step
                if start_hook:
                    t.callbacks.dispatch("on_train_batch_start", t, batch, first)
                self._after_chunk(t.train_step(batch), first, 1, stacked=False)
                if self.finished():
                    break
            return yielded
        while not self.finished():
            chunk = list(itertools.islice(iterator, self.chunk_size()))
            if not chunk:
                break
            yielded = True
            first = t.global_step
            for i, batch in enumerate(chunk):
                t.callbacks.dispatch("on_train_batch_start", t, batch, first + i)
            metrics = t.train_steps(chunk)  # a trainer may override it (GRPO's host rewards)
            self._after_chunk(metrics, first, len(chunk), stacked=True)
        return yielded

    def _run_source_epoch(self) -> bool:
        t = self.trainer
        source = self.dataloader
        epoch_length = self._epoch_length()
        yielded = False
        while not self.finished():
            size = self.chunk_size(epoch_length)
            if size <= 0:
                break
            yielded = True
            first = t.global_step
            for i in range(size):
                t.callbacks.dispatch("on_train_batch_start", t, None, first + i)
            metrics = t.run_chunk(source=source, size=size)
            self._after_chunk(metrics, first, size, stacked=True)
        return yielded

    def _after_chunk(self, metrics: Mapping[str, Any], first: int, size: int, stacked: bool) -> None:
        t = self.trainer
        t.batches_seen_in_epoch += size
        if t.metrics.has_pending:
            t.emit_log()  # the previous intervals' (lagged), now that this call is queued
        log_every = t.config.log_every_n_steps
        # Logging steps strictly inside a chunk (only when logs may lag) close their intervals here.
        inside = range(first + log_every - first % log_every, t.global_step, log_every) if stacked else ()
        start = 0
        for end_step in inside:
            t.metrics.add(metrics, rows=(start, end_step - first))
            t.metrics.close_interval(end_step)
            start = end_step - first
        t.metrics.add(metrics, rows=None if start == 0 else (start, size))
        if t.global_step % log_every == 0:
            t.metrics.close_interval(t.global_step)
            if not t.lag_logs:
                t.emit_log()
        if t.callbacks.has_listeners("on_train_batch_end"):
            if not stacked:
                t.callbacks.dispatch("on_train_batch_end", t, metrics, first)
            else:
                for i in range(size):
                    t.callbacks.dispatch("on_train_batch_end", t, StepView(metrics, i), first + i)


def slice_rows(metrics: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` rows of stacked ``(K, ...)`` metrics."""
    return jax.tree.map(lambda x: x[:n], dict(metrics))
