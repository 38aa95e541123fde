"""Settings shared by every trainer.

Algorithm configs (``REINFORCEConfig``, ``PPOConfig``, ...) subclass
:class:`TrainerConfig`, so one object carries both the algorithm's
hyper-parameters and the loop's settings. The loop settings are keyword-only,
which keeps the algorithm fields first for positional construction exactly as
the seeds document them (``REINFORCEConfig(0.99, True, 0.01)``).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """Loop settings of :class:`artifex_rl.Trainer`.

    Attributes:
      log_every_n_steps: metrics are pulled from the device, averaged over the
        interval and handed to callbacks every this many global steps. Between
        logging steps the loop never waits for the device.
      max_grad_norm: clip the gradient to this global L2 norm inside the
        compiled step (``None`` disables clipping).
      grad_accum_steps: split each (mini)batch into this many micro-batches
        along axis 0, average their gradients and apply one optimizer update.
      seed: seed of the trainer's RNG stream (the ``rng`` handed to
        ``compute_loss``; sampling inside the model uses the model's own Rngs).
      log_grad_norm: report the gradient's global norm as ``grad_norm``. It
        is always reported when ``max_grad_norm`` is set (clipping needs it);
        otherwise it is off by default because on a small model on CPU the
        extra reduction costs ~10% of a step.
      steps_per_execution: ``fit`` runs this many batches per compiled call
        (a ``lax.scan`` over the step, as in Keras), paying the Python loop's
        and the runtime's per-call cost once per call. A source that makes
        its batches on the device with the current policy (a
        :class:`~artifex_rl.device_source.DeviceBatchSource`, e.g. a gymnax
        rollout source) is fused into the call: each round collects with
        the parameters of the round before, exactly as with 1. Any other
        dataloader is read ``steps_per_execution`` batches ahead, so use it
        only when batches do not depend on the current parameters. Logging
        and ``max_steps`` land on the same steps as with 1. Per-batch hooks
        of a chunk run after it, seeing the state at its end, so a
        ``ModelCheckpoint(every_n_train_steps=N)`` saves at chunk ends that
        are multiples of N: choose N as a multiple of this. On XLA:CPU, ten
        steps per call made a small MLP's ``fit`` 0.86x the time of a
        hand-written one-call-per-step loop (``bench/trainer_overhead.py``).
        A source whose batches depend on the policy but that cannot be fused
        (``depends_on_policy = True``) is refused with K > 1.
      scan_unroll: the ``unroll`` of every ``lax.scan`` the step runs (the
        K-round runner, epochs x minibatches, gradient accumulation): ``1``
        rolled, ``True`` fully unrolled. On XLA:CPU a convolution's gradient
        inside a rolled scan (or a conditional) runs about 20x slower than
        under plain ``jit`` (jax#12868); conv models with K > 1, minibatches
        or accumulation should unroll (longer compile, fast steps: K = 4 conv
        steps per call unrolled cost 0.86x one step per call,
        ``bench/trainer_overhead.py``).
      nan_policy: what a step whose loss, metrics or new parameters are not
        finite does, decided inside the compiled step (no per-step host sync):
        the step never applies its updates (every model, every minibatch: the
        state stays the one before the step), and ``skipped_step`` is 1 in its
        metrics. ``"raise"`` (default) then raises ``FloatingPointError`` at the
        next host read of the metrics (the logging step), naming the step and
        the first non-finite metric; ``"skip"`` keeps training (the logged
        ``skipped_step`` is the fraction of skipped steps); ``"off"`` applies
        every update unchecked (no check at all, for benchmarks of the bare step).
      param_sharding: with ``Trainer(..., mesh=...)``: ``"replicated"``
        (default; data parallel) keeps a full copy of the parameters and
        optimizer state on every device; ``"fsdp"`` splits each parameter and
        its optimizer-state twins along its largest axis divisible by the
        mesh's ``"data"`` size (FSDP/ZeRO-3 over one axis; replicated when no
        axis divides). Ignored without a mesh. See ``docs/distributed.md``.
    """

    log_every_n_steps: int = 10
    max_grad_norm: float | None = None
    grad_accum_steps: int = 1
    seed: int = 0
    log_grad_norm: bool = False
    steps_per_execution: int = 1
    scan_unroll: int | bool = 1
    nan_policy: str = "raise"
    param_sharding: str = "replicated"

    def __post_init__(self) -> None:
        if self.log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1, got {self.log_every_n_steps}")
        if self.steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be >= 1, got {self.steps_per_execution}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if isinstance(self.scan_unroll, bool) is False and (not isinstance(self.scan_unroll, int) or self.scan_unroll < 1):
            raise ValueError(f"scan_unroll must be True, False or an int >= 1, got {self.scan_unroll!r}")
        if self.nan_policy not in ("raise", "skip", "off"):
            raise ValueError(f"nan_policy must be 'raise', 'skip' or 'off', got {self.nan_policy!r}")
        if self.param_sharding not in ("replicated", "fsdp"):
            raise ValueError(f"param_sharding must be 'replicated' or 'fsdp', got {self.param_sharding!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of every field (for checkpoints and loggers)."""
        return {"config_class": type(self).__name__, **dataclasses.asdict(self)}
