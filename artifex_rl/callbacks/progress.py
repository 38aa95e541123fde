"""``ProgressBarCallback``: a tqdm bar updated only when metrics are logged.

Inside ``fit`` the bar moves in ``on_log`` (every ``log_every_n_steps``), so
training pays no per-step host sync and no per-step tqdm call. In a
hand-written loop it moves in ``on_train_batch_end`` every
``refresh_every_n_steps`` steps (default: ``trainer.config.log_every_n_steps``),
pulling only the shown metrics to the host then.

When the output is not a terminal (CI logs, ``nohup``), the bar is disabled
(``disable=None``, tqdm's own rule) and the callback writes one summary line
at train end instead (``step 200/200 | loss=0.0123 | 1234.5 steps/s``), so
logs stay readable. ``disable=True`` writes nothing at all; ``disable=False``
forces the bar (e.g. into a ``StringIO``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from tqdm import tqdm

from artifex_rl.events import Callback

if TYPE_CHECKING:
    from artifex_rl.trainer import Trainer

#: Metrics shown when present, in this order (at most ``max_metrics`` of them).
DEFAULT_KEYS = (
    "loss",
    "mean_reward",
    "episode_return",
    "policy_loss",
    "value_loss",
    "kl_divergence",
    "reward_margin",
    "accuracy",
)


def _format(value: float) -> str:
    return f"{value:.4g}"


def _is_tty(file: IO[str]) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressBarCallback(Callback):
    """A tqdm progress bar with the latest logged metrics as its postfix.

    Args:
      refresh_every_n_steps: refresh at most every this many steps (``None``:
        at every log in ``fit``; every ``log_every_n_steps`` in a
        hand-written loop).
      leave: keep the bar on screen after training.
      file: output stream (default ``sys.stderr``).
      disable: ``None`` disables the bar when ``file`` is not a terminal
        (then a one-line summary is written at the end), ``True`` disables
        all output, ``False`` always draws the bar.
      keys: metrics to show (default: those of :data:`DEFAULT_KEYS` present,
        else the first few logged).
      total: number of steps of the bar (default: ``max_steps`` of ``fit``,
        else ``len(dataloader) * max_epochs`` when known).
      max_metrics: how many metrics the postfix shows at most.
    """

    log_may_lag = True  # on_log only records (metrics, step)
    main_process_only = True  # several processes: process 0 writes

    def __init__(
        self,
        refresh_every_n_steps: int | None = None,
        leave: bool = True,
        file: IO[str] | None = None,
        disable: bool | None = None,
        *,
        keys: Sequence[str] | None = None,
        total: int | None = None,
        max_metrics: int = 4,
    ):
        if refresh_every_n_steps is not None and refresh_every_n_steps < 1:
            raise ValueError(f"refresh_every_n_steps must be >= 1 or None, got {refresh_every_n_steps}")
        self.refresh_every_n_steps = refresh_every_n_steps
        self.leave = leave
        self.file = file
        self.disable = disable
        self.keys = tuple(keys) if keys is not None else None
        self.total = total
        self.max_metrics = max_metrics
        self.bar: tqdm | None = None
        self._summary_only = False
        self._last_refresh = 0
        self._start_step = 0
        self._start_time = 0.0
        self._postfix: dict[str, str] = {}

    # ------------------------------------------------------------------ #
    # Hooks
    # ------------------------------------------------------------------ #
    def on_train_begin(self, trainer: Trainer) -> None:
        self._close()
        file = self.file if self.file is not None else sys.stderr
        self._start_step = self._last_refresh = trainer.global_step
        self._start_time = time.perf_counter()
        self._postfix = {}
        self._summary_only = self.disable is None and not _is_tty(file)
        if self.disable or self._summary_only:
            return
        self.bar = tqdm(
            total=self._total(trainer),
            initial=trainer.global_step,
            unit="step",
            leave=self.leave,
            file=file,
            disable=False,
            dynamic_ncols=True,
            mininterval=0.0,  # we already throttle: every refresh is wanted
        )

    def on_log(self, trainer: Trainer, metrics: Mapping[str, float], step: int) -> None:
        self._postfix = self._select(metrics)
        every = self.refresh_every_n_steps
        if every is None or step - self._last_refresh >= every:
            self._refresh(step)

    def on_train_end(self, trainer: Trainer) -> None:
        self._postfix = self._select(trainer.callback_metrics) or self._postfix
        self._refresh(trainer.global_step)
        if self._summary_only:
            file = self.file if self.file is not None else sys.stderr
            print(self.summary(trainer), file=file, flush=True)
        self._close()

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        self._close()

    def summary(self, trainer: Trainer) -> str:
        """``step 200/200 | loss=0.0123 | 1234.5 steps/s`` for the run so far."""
        total = self._total(trainer)
        steps = trainer.global_step - self._start_step
        elapsed = max(time.perf_counter() - self._start_time, 1e-9)
        parts = [f"step {trainer.global_step}" + (f"/{total}" if total else "")]
        if self._postfix:
            parts.append(" ".join(f"{k}={v}" for k, v in self._postfix.items()))
        parts.append(f"{steps / elapsed:.1f} steps/s")
        return " | ".join(parts)

    # ------------------------------------------------------------------ #
    # Internals
    # ------------------------------------------------------------------ #
    def _total(self, trainer: Trainer) -> int | None:
        if self.total is not None:
            return self.total
        max_steps = getattr(trainer, "max_steps", None) if trainer.fitting else None
        max_epochs = getattr(trainer, "max_epochs", None) if trainer.fitting else None
        by_epochs = None
        if max_epochs is not None:
            try:
                by_epochs = len(trainer.dataloader) * max_epochs  # type: ignore[arg-type]
            except TypeError:  # an iterable without a length
                pass
        candidates = [t for t in (max_steps, by_epochs) if t is not None]
        return min(candidates) if candidates else None

    def _keys(self, metrics: Mapping[str, Any]) -> list[str]:
        if self.keys is not None:
            return [k for k in self.keys if k in metrics]
        keys = [k for k in DEFAULT_KEYS if k in metrics]
        if not keys:
            keys = [k for k in metrics if not k.startswith("_")]
        return keys[: self.max_metrics]

    def _select(self, metrics: Mapping[str, Any]) -> dict[str, str]:
        return {k: _format(float(metrics[k])) for k in self._keys(metrics)}

    def _refresh(self, step: int) -> None:
        self._last_refresh = step
        if self.bar is None:
            return
        self.bar.set_postfix(self._postfix, refresh=False)
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)  # redraws (mininterval=0) and feeds tqdm's rate
        else:
            self.bar.refresh()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
