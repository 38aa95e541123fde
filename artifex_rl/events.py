"""The event bus: the :class:`Callback` base class and its ordered dispatcher.

Hook names and their order follow Lightning, so code written against
Lightning callbacks reads the same here::

    on_train_begin
      on_epoch_begin
        on_train_batch_start -> train_step -> [on_log] -> on_train_batch_end   (each batch)
          (on_log at every log_every_n_steps-th step, before that step's batch end)
      on_epoch_end
    on_train_end            (or on_exception, then the error is re-raised)

Checkpoints call ``on_save_checkpoint(trainer, checkpoint)`` on every
callback while they are assembled and ``on_load_checkpoint`` on restore.

In a hand-written loop (the seeds' ``for batch in loader: trainer.train_step
...; cb.on_train_batch_end(trainer, metrics, step)``) the trainer closes a
logging interval every ``log_every_n_steps`` steps itself, and the default
:meth:`Callback.on_train_batch_end` hands its means to :meth:`Callback.on_log`,
so a logger written for ``fit`` works unchanged in such a loop.

Callbacks run in list order, except that callbacks with ``runs_last = True``
(checkpointing, early stopping) run after all the others: a checkpoint then
sees every other callback's state for the step, and early stopping decides
after the loggers have recorded the step that triggered it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from artifex_rl.trainer import Trainer

_log = logging.getLogger(__name__)


class Callback:
    """Base class for callbacks: override only the hooks you need.

    Every hook receives the trainer first. ``metrics`` in
    :meth:`on_train_batch_end` are the step's raw device scalars (reading them
    forces a device sync; do it only every few steps). :meth:`on_log` receives
    host floats averaged over the logging interval; inside ``fit`` it is the
    place for loggers. A callback that keeps state across a run returns it
    from :meth:`state_dict` (a JSON-serialisable dict); it is saved with every
    checkpoint and handed back to :meth:`load_state_dict` on resume.
    """

    #: Run after all callbacks without this flag (checkpointing, early stopping).
    runs_last: bool = False

    #: ``True`` for a pure logger: its :meth:`on_log` may run after the next
    #: step has been launched (same ``step`` and metrics; ``trainer.global_step``
    #: and the parameters may be one call ahead). When every callback of a
    #: ``fit`` says so, ``fit`` pulls each interval's metrics only once the next
    #: step is queued, so the device never idles while the host logs. Leave it
    #: ``False`` for callbacks that act on metrics (stopping, checkpoint
    #: selection) or read the model when they log.
    log_may_lag: bool = False

    def next_boundary_step(self, trainer: Trainer, step: int) -> int | None:
        """The first step after ``step`` at which this callback needs a compiled call to end.

        ``fit`` runs up to ``steps_per_execution`` steps per call and calls
        :meth:`on_train_batch_end` for each of them afterwards, when the state
        is the chunk's last. A callback that reads or saves the state after
        particular steps (a checkpoint every N steps) returns the next of
        them here, so a chunk ends there. ``None`` (the default): no such step.
        """
        return None

    @property
    def waits_for_logs(self) -> bool:
        """Whether ``fit`` must deliver each interval's metrics before it queues the next call.

        True unless :attr:`log_may_lag`. A callback that acts without reading
        logged metrics (a checkpoint without a ``monitor``) overrides it to
        ``False`` while keeping ``log_may_lag = False``, so its own failures
        still stop the run instead of being reported and switched off.
        """
        return not self.log_may_lag

    #: ``True`` for a callback that writes files or prints for the whole run (a
    #: logger, a progress bar): in a multi-process run only process 0 keeps it.
    #: Checkpointing is not one of them (every process takes part in an orbax save).
    main_process_only: bool = False

    @property
    def state_key(self) -> str:
        """Key under which this callback's state is stored in a checkpoint."""
        return type(self).__qualname__

    def on_train_begin(self, trainer: Trainer) -> None:
        """Called once before the first step of ``fit`` (or a hand-written loop)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Called once after the last step when training ends without error."""

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        """Called at the start of each pass over the dataloader."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: Mapping[str, float]) -> None:
        """Called at the end of each pass; ``metrics`` are the latest logged host values."""

    def on_train_batch_start(self, trainer: Trainer, batch: Mapping[str, Any], step: int) -> None:
        """Called before ``train_step``; ``step`` is the global step about to run (0-based).

        ``batch`` is ``None`` when ``fit`` fuses a device source's batch-making
        into the compiled step (``steps_per_execution > 1``): the batch does not
        exist until the call has run.
        """

    def on_train_batch_end(self, trainer: Trainer, metrics: Mapping[str, Any], step: int) -> None:
        """Called after ``train_step``; ``metrics`` are device scalars, ``step`` as above.

        ``fit`` calls it only on callbacks that override it. Called by hand in a
        hand-written loop, this default forwards the interval means the trainer
        logged at this step (every ``log_every_n_steps``) to :meth:`on_log`;
        an override that wants that too calls ``super().on_train_batch_end(...)``.
        """
        if not trainer.fitting:
            logged = trainer.logged_metrics_at(trainer.global_step)
            if logged is not None:
                self.on_log(trainer, logged, trainer.global_step)


    def on_log(self, trainer: Trainer, metrics: Mapping[str, float], step: int) -> None:
        """Called by ``fit`` every ``log_every_n_steps`` with interval-averaged host metrics.

        ``step`` is the number of optimisation steps the metrics cover
        (``trainer.global_step`` at that point; see :attr:`log_may_lag`).
        All callbacks receive the same dict, in order, and it becomes
        ``trainer.callback_metrics``: a callback may add entries (throughput,
        derived values) for the loggers that run after it.
        """

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        """Called when the loop raises; the exception is re-raised afterwards."""

    def on_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        """Called while a checkpoint's metadata is assembled; may add JSON entries to ``checkpoint``."""

    def on_load_checkpoint(self, trainer: Trainer, checkpoint: Mapping[str, Any]) -> None:
        """Called after a checkpoint was restored, with its metadata."""

    def state_dict(self) -> dict[str, Any]:
        """State to save with checkpoints (JSON-serialisable)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def order_callbacks(callbacks: Iterable[Callback]) -> list[Callback]:
    """List order, with ``runs_last`` callbacks moved (stably) to the end."""
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(
                f"callbacks must be artifex_rl.callbacks.Callback instances, got {type(cb).__name__}"
            )
    return [cb for cb in callbacks if not cb.runs_last] + [cb for cb in callbacks if cb.runs_last]


class CallbackList:
    """Calls one hook on every callback, in order.

    ``dispatch("on_log", trainer, metrics, step)`` calls
    ``cb.on_log(trainer, metrics, step)`` for each callback. Exceptions from a
    callback propagate (a broken callback should stop the run), except from a
    callback with ``log_may_lag = True`` (a logger, which only records): it is
    reported once with ``logging.error`` and disabled, and training goes on;
    and except while handling ``on_exception``, where every callback must get
    its chance to clean up.
    """

    def __init__(self, callbacks: Iterable[Callback] = ()):
        callbacks = list(callbacks)
        if any(cb.main_process_only for cb in callbacks):
            import jax

            if jax.process_index() != 0:  # several processes: one writes the logs
                callbacks = [cb for cb in callbacks if not cb.main_process_only]
        self.callbacks: list[Callback] = order_callbacks(callbacks)
        # Only hooks some callback actually overrides are called in the hot
        # loop; a step with no interested callback pays no Python call at all.
        self._active: dict[str, list[Callback]] = {}
        #: state keys of the callbacks disabled after a failure (see :meth:`dispatch`)
        self.disabled: list[str] = []
        self._off: set[int] = set()

    def _listeners(self, hook: str) -> list[Callback]:
        if hook not in self._active:
            base = getattr(Callback, hook)
            self._active[hook] = [
                cb for cb in self.callbacks
                if getattr(type(cb), hook, base) is not base and id(cb) not in self._off
            ]
        return self._active[hook]

    def has_listeners(self, hook: str) -> bool:
        """Whether any callback overrides ``hook``."""
        return bool(self._listeners(hook))

    def dispatch(self, hook: str, *args: Any) -> None:
        for cb in self._listeners(hook):
            if not cb.log_may_lag:
                getattr(cb, hook)(*args)
                continue
            # A logger (log_may_lag: it only records) that fails -- a W&B
            # outage, a full disk under the metrics file -- must not end hours
            # of training: it is reported once and switched off.
            try:
                getattr(cb, hook)(*args)
            except Exception:  # noqa: BLE001 - reported, and the callback is disabled
                self.disable(cb, hook)

    def disable(self, cb: Callback, hook: str) -> None:
        """Report ``cb``'s failure in ``hook`` once (with its traceback) and call it no more."""
        _log.error(
            "callback %s failed in %s and is disabled for the rest of this run (training continues)",
            cb.state_key, hook, exc_info=True,
        )
        # It stays in self.callbacks: its state is still saved with checkpoints.
        self.disabled.append(cb.state_key)
        self._off.add(id(cb))
        for listeners in self._active.values():
            if cb in listeners:
                listeners.remove(cb)

    def dispatch_exception(self, trainer: Trainer, exception: BaseException) -> None:
        for cb in self._listeners("on_exception"):
            try:
                cb.on_exception(trainer, exception)
            except Exception:  # noqa: BLE001 - the original error matters more
                _log.exception("callback %s failed in on_exception", cb.state_key)

    def state_dicts(self) -> dict[str, dict[str, Any]]:
        """``{key: state}`` for every callback; duplicate class names get ``#i`` suffixes."""
        return {key: cb.state_dict() for key, cb in self._keyed()}

    def load_state_dicts(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        for key, cb in self._keyed():
            if key in states:
                cb.load_state_dict(states[key])

    def _keyed(self) -> Sequence[tuple[str, Callback]]:
        seen: dict[str, int] = {}
        keyed = []
        for cb in self.callbacks:
            base = cb.state_key
            n = seen.get(base, 0)
            seen[base] = n + 1
            keyed.append((base if n == 0 else f"{base}#{n}", cb))
        return keyed

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)
