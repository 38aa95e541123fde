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

    def on_train_begin(self, trainer) -> None:
        self._last_time = time.perf_counter()
        self._last_step = trainer.global_step

    def on_log(self, trainer, metrics: MutableMapping[str, float], step: int) -> None:
        now = time.perf_counter()
        if self._last_time is None:  # hand-written loop without on_train_begin
            self._last_time, self._last_step = now, step
        elapsed = now - self._last_time
        metrics[self.name] = float(step * self.samples_per_step)
        if elapsed > 0 and step > self._last_step:
            metrics["sps"] = (step - self._last_step) * self.samples_per_step / elapsed
        self._last_time, self._last_step = now, step
