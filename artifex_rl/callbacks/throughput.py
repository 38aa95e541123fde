"""Throughput: samples (e.g. environment steps) seen so far and per second."""

from __future__ import annotations

import time
from collections.abc import MutableMapping

from artifex_rl.events import Callback


class Throughput(Callback):
    """Adds ``<name>`` (total samples) and ``sps`` (samples/s over the last interval) to logged metrics.

    Place it before the loggers: ``on_log`` metrics are shared in callback order.

    Args:
      samples_per_step: samples consumed by one ``train_step`` (for a rollout
        source: ``num_envs * num_steps``).
      name: metric name of the running total, e.g. ``"env_steps"``.
    """

    log_may_lag = True  # on_log only records (metrics, step)

    def __init__(self, samples_per_step: int, name: str = "env_steps"):
        if samples_per_step <= 0:
            raise ValueError(f"samples_per_step must be > 0, got {samples_per_step}")
        self.samples_per_step = int(samples_per_step)
        self.name = name
        self._last_time: float | None = None
        self._last_step = 0
        self._rate: float | None = None

    def on_train_begin(self, trainer) -> None:
        self._last_time = time.perf_counter()
        self._last_step = trainer.global_step
        self._rate: float | None = None

    def on_log(self, trainer, metrics: MutableMapping[str, float], step: int) -> None:
        now = time.perf_counter()
        if self._last_time is None:  # hand-written loop without on_train_begin
            self._last_time, self._last_step, self._rate = now, step, None
        # Logs of one compiled call that spans several intervals arrive together:
        # the rate is that of the whole call (up to the last step read now).
        through = max(step, getattr(trainer, "logged_through_step", step) or step)
        if through > self._last_step:
            elapsed = now - self._last_time
            if elapsed > 0:
                self._rate = (through - self._last_step) * self.samples_per_step / elapsed
            self._last_time, self._last_step = now, through
        metrics[self.name] = float(step * self.samples_per_step)
        if self._rate is not None:
            metrics["sps"] = self._rate
