"""``EarlyStopping``: stop ``fit`` when a logged metric stops improving (or goes bad).

Checks run each time metrics are logged (``on_log``; ``check_on="epoch"``
checks at epoch ends instead), in this order, as in Lightning:

1. ``check_finite``: a NaN/inf value stops at once.
2. ``stopping_threshold``: the value reached the goal (``<`` it for
   ``mode="min"``, ``>`` for ``"max"``): stop.
3. ``divergence_threshold``: the value is worse than this bound: stop.
4. improvement: better than the best so far by more than ``min_delta``
   resets the patience counter; otherwise it counts up, and reaching
   ``patience`` stops.

Stopping sets ``trainer.should_stop``; ``fit`` ends after the current step.
In a hand-written loop, calling ``on_train_batch_end`` by hand runs the check
on the trainer's interval means every ``log_every_n_steps`` steps (see
:class:`~artifex_rl.events.Callback`); the loop should test
``trainer.should_stop`` itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from artifex_rl.events import Callback

if TYPE_CHECKING:
    from artifex_rl.trainer import Trainer

_log = logging.getLogger(__name__)


class EarlyStopping(Callback):
    """Stops training when ``monitor`` has not improved for ``patience`` checks.

    Args:
      monitor: metric name in the logged metrics (e.g. ``"mean_reward"``).
      mode: ``"min"`` or ``"max"``: which direction is an improvement.
      patience: checks without improvement before stopping.
      min_delta: an improvement must beat the best by more than this.
      check_finite: stop when the value is NaN or infinite.
      stopping_threshold: stop as soon as the value is better than this.
      divergence_threshold: stop as soon as the value is worse than this.
      check_on: ``"log"`` (each logged interval) or ``"epoch"`` (epoch ends).
      strict: raise if ``monitor`` is missing from non-empty logged metrics
        (``False``: skip that check).

    Attributes:
      best: best value so far (``None`` before the first check).
      wait_count: checks since the last improvement.
      stopped_step: global step at which it stopped (``None`` while running).
      stop_reason: why it stopped, in words.
    """

    runs_last = True

    def __init__(
        self,
        monitor: str,
        mode: str = "min",
        patience: int = 3,
        min_delta: float = 0.0,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on: str = "log",
        strict: bool = True,
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping mode must be 'min' or 'max', got {mode!r}")
        if check_on not in ("log", "epoch"):
            raise ValueError(f"EarlyStopping check_on must be 'log' or 'epoch', got {check_on!r}")
        if patience < 1:
            raise ValueError(f"EarlyStopping patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"EarlyStopping min_delta must be >= 0, got {min_delta}")
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.check_on = check_on
        self.strict = strict
        self.best: float | None = None
        self.wait_count = 0
        self.stopped_step: int | None = None
        self.stop_reason: str | None = None

    # ------------------------------------------------------------------ #
    # Hooks
    # ------------------------------------------------------------------ #
    def on_train_begin(self, trainer: Trainer) -> None:
        # best and wait_count carry over (also from a checkpoint); a new run has not stopped yet.
        self.stopped_step = None
        self.stop_reason = None

    def on_log(self, trainer: Trainer, metrics: Mapping[str, float], step: int) -> None:
        if self.check_on == "log":
            self._check(trainer, metrics)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.check_on == "epoch":
            self._check(trainer, metrics)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "wait_count": self.wait_count,
            "stopped_step": self.stopped_step,
            "stop_reason": self.stop_reason,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state.get("best")
        self.wait_count = int(state.get("wait_count", 0))
        self.stopped_step = state.get("stopped_step")
        self.stop_reason = state.get("stop_reason")

    # ------------------------------------------------------------------ #
    # The decision
    # ------------------------------------------------------------------ #
    def _better(self, value: float, than: float, margin: float = 0.0) -> bool:
        return value < than - margin if self.mode == "min" else value > than + margin

    def evaluate(self, value: float) -> str | None:
        """Update the state with one new ``value``; return the reason to stop, or ``None``."""
        name = self.monitor
        if self.check_finite and not math.isfinite(value):
            return f"{name} = {value} is not finite"
        if self.stopping_threshold is not None and self._better(value, self.stopping_threshold):
            return f"{name} = {value:.6g} reached the stopping threshold {self.stopping_threshold}"
        if self.divergence_threshold is not None and self._better(self.divergence_threshold, value):
            return f"{name} = {value:.6g} diverged past {self.divergence_threshold}"
        if self.best is None or self._better(value, self.best, self.min_delta):
            self.best = value
            self.wait_count = 0
            return None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return (
                f"{name} did not improve by more than {self.min_delta} over {self.patience} checks "
                f"(best {self.best:.6g})"
            )
        return None

    def _check(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        if self.monitor not in metrics:
            if self.strict and metrics:
                raise KeyError(
                    f"EarlyStopping monitors {self.monitor!r}, which is not among the logged metrics "
                    f"{sorted(metrics)} (pass strict=False to skip such checks)"
                )
            return
        reason = self.evaluate(float(metrics[self.monitor]))
        if reason is not None:
            self.stopped_step = trainer.global_step
            self.stop_reason = reason
            trainer.should_stop = True
            _log.info("EarlyStopping at step %d: %s", trainer.global_step, reason)
