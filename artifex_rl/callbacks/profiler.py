"""``JAXProfiler`` (a trace of a window of steps) and ``DeviceMemoryMonitor``.

The profiler traces global steps ``start_step .. end_step - 1``. It checks
the window after each step (``on_train_batch_end``) and at ``on_train_begin``,
so it works the same inside ``fit`` and in a hand-written loop that calls
only ``on_train_begin`` / ``on_train_batch_end`` / ``on_train_end``. At both
edges it waits for the device (``jax.block_until_ready(trainer.train_state)``)
so the trace holds whole steps, not the tail of an earlier one or half of the
last. Open the trace (``log_dir/plugins/profile/<run>/*.xplane.pb``) with
TensorBoard's profile plugin or xprof.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import jax

from artifex_rl.events import Callback

if TYPE_CHECKING:
    from artifex_rl.trainer import Trainer

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ProfilingConfig:
    """Settings of :class:`JAXProfiler`.

    Attributes:
      log_dir: where the trace is written.
      start_step: first global step (0-based) inside the trace.
      end_step: the trace stops once this many global steps are done
        (``end_step`` itself is not traced).
    """

    log_dir: str
    start_step: int = 10
    end_step: int = 20

    def __post_init__(self) -> None:
        if not 0 <= self.start_step < self.end_step:
            raise ValueError(
                f"ProfilingConfig needs 0 <= start_step < end_step, got start_step={self.start_step}, "
                f"end_step={self.end_step}"
            )


class JAXProfiler(Callback):
    """Records a ``jax.profiler`` trace of global steps ``[start_step, end_step)``.

    A run resumed past ``start_step`` traces what is left of the window. The
    trace is stopped (and written) on train end and on an exception inside
    the window. If another trace is already running, it warns and skips.

    Attributes:
      trace_written: True once a trace has been stopped and written.
    """

    def __init__(self, config: ProfilingConfig):
        if not isinstance(config, ProfilingConfig):
            raise TypeError(f"JAXProfiler expects a ProfilingConfig, got {type(config).__name__}")
        self.config = config
        self.active = False
        self.trace_written = False

    def on_train_begin(self, trainer: Trainer) -> None:
        self._update(trainer)

    def on_train_batch_end(self, trainer: Trainer, metrics: Mapping[str, Any], step: int) -> None:
        self._update(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        self._stop(trainer, block=True)

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        # The state may hold deleted or poisoned buffers: do not wait on it.
        self._stop(trainer, block=False)

    def _update(self, trainer: Trainer) -> None:
        done = trainer.global_step  # steps completed = the 0-based index of the next step
        if (
            not self.active
            and not self.trace_written
            and self.config.start_step <= done < self.config.end_step
        ):
            self._start(trainer)
        elif self.active and done >= self.config.end_step:
            self._stop(trainer, block=True)

    def _start(self, trainer: Trainer) -> None:
        jax.block_until_ready(trainer.train_state)  # earlier steps stay out of the trace
        try:
            jax.profiler.start_trace(self.config.log_dir)
        except RuntimeError as exc:  # e.g. "Profile has already been started"
            _log.warning("JAXProfiler: could not start a trace in %s: %s", self.config.log_dir, exc)
            self.trace_written = True  # do not retry every step
            return
        self.active = True

    def _stop(self, trainer: Trainer, *, block: bool) -> None:
        if not self.active:
            return
        self.active = False
        try:
            if block:
                jax.block_until_ready(trainer.train_state)  # the last traced step completes inside
        finally:
            jax.profiler.stop_trace()
            self.trace_written = True


class DeviceMemoryMonitor(Callback):
    """Adds device memory use to the logged metrics, where the backend reports it.

    Each time metrics are logged it adds ``{prefix}bytes_in_use`` and
    ``{prefix}peak_bytes_in_use`` from ``device.memory_stats()`` (GPU/TPU).
    On CPU ``memory_stats()`` is ``None`` and nothing is added. Put it
    *before* the loggers in the callback list: it adds to the metrics dict
    the loggers receive next (and to ``trainer.callback_metrics``).

    Args:
      device: the device to query (default: ``jax.devices()[0]``).
      prefix: prefix of the metric names.
    """

    log_may_lag = True  # adds memory statistics to the logged metrics, nothing else

    def __init__(self, device: jax.Device | None = None, prefix: str = "memory/"):
        self.device = device
        self.prefix = prefix

    def stats(self) -> dict[str, float]:
        """The current memory metrics (empty when the backend reports none)."""
        device = self.device or jax.devices()[0]
        raw = device.memory_stats() if hasattr(device, "memory_stats") else None
        if not raw:
            return {}
        return {
            f"{self.prefix}{key}": float(raw[key])
            for key in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
            if key in raw
        }

    def on_log(self, trainer: Trainer, metrics: Mapping[str, float], step: int) -> None:
        stats = self.stats()
        if stats and isinstance(metrics, MutableMapping):
            metrics.update(stats)
            trainer.callback_metrics.update(stats)

    def on_train_batch_end(self, trainer: Trainer, metrics: Mapping[str, Any], step: int) -> None:
        super().on_train_batch_end(trainer, metrics, step)
