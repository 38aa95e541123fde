"""Energy-based model training: contrastive divergence with Langevin MCMC and a replay buffer.

Following Du & Mordatch (2019), ``p(x) ∝ exp(-E(x))`` and each step:

1. (``before_update``) draws ``B`` chain starts: with probability
   ``buffer_prob`` (0.95) a stored chain from the persistent replay buffer in
   ``train_state["extra"]["buffer"] (buffer_size, H, W, C)``, else uniform
   noise in ``[-1, 1]``; runs ``langevin_steps`` of Langevin dynamics under the
   current energy (a ``lax.scan``; the energy is an MLP, see the models' note
   on conv nets in scans),

   ``x <- clip(x - (step_size / 2) clip(grad_x E(x), +-grad_clip) + noise_std eps, -1, 1)``
   (the per-pixel gradient clip, as in the UvA deep-learning EBM tutorial, keeps
   early chains from jumping to the box's corners),

   writes the chains' ends back to their buffer slots and hands them to the
   loss as ``batch["negatives"]`` (no gradient flows through the chain);
2. (``compute_loss``) ``L = mean E(x+) - mean E(x-)``
   ``+ alpha mean(E(x+)^2 + E(x-)^2)`` (energy magnitude regulariser)
   ``+ gamma mean ||grad_x E(x+)||^2`` (gradient-norm regulariser on the data).

The buffer and its RNG come from the trainer state, so it is checkpointed and
a resumed run continues exactly. A batch is ``{"images": (B, H, W, C)}`` in ``[-1, 1]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from artifex_rl.batches import refuse_mask, require
from artifex_rl.config import TrainerConfig
from artifex_rl.trainer import Trainer

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnergyConfig(TrainerConfig):
    """Settings of :class:`EnergyTrainer`.

    Attributes:
      langevin_steps: MCMC steps per training step.
      step_size: the Langevin gradient step (``x -= step_size / 2 * grad E``).
      noise_std: std of the Gaussian noise added per step.
      buffer_size: chains kept in the replay buffer.
      buffer_prob: probability that a chain starts from the buffer (else noise).
      alpha: weight of ``E(x+)^2 + E(x-)^2`` (0: off).
      grad_norm_weight: ``gamma``, weight of ``||grad_x E(x+)||^2`` (0: off).
      grad_clip: per-pixel clip of ``grad_x E`` in a Langevin step (``None``: off).
      image_shape: ``(H, W, C)`` of the data (the buffer's shape).
      unroll: ``unroll`` of the Langevin scan.
    """

    langevin_steps: int = 20
    step_size: float = 10.0
    noise_std: float = 0.005
    buffer_size: int = 10000
    buffer_prob: float = 0.95
    alpha: float = 1.0
    grad_norm_weight: float = 0.0
    grad_clip: float | None = None
    image_shape: tuple[int, int, int] = (8, 8, 1)
    unroll: int | bool = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("langevin_steps", "buffer_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EnergyConfig.{name} must be an int >= 1, got {value!r}")
        for name in ("step_size", "noise_std", "alpha", "grad_norm_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"EnergyConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.buffer_prob <= 1.0:
            raise ValueError(f"EnergyConfig.buffer_prob must be in [0, 1], got {self.buffer_prob!r}")
        shape = tuple(self.image_shape)
        if len(shape) != 3 or not all(hasattr(d, "__index__") and d >= 1 for d in shape):
            raise ValueError(f"EnergyConfig.image_shape must be (H, W, C) of positive ints, got {self.image_shape!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"EnergyConfig.grad_clip must be > 0 or None (no clip), got {self.grad_clip!r}")


def langevin_step(energy: Callable[[Array], Array], x: Array, noise: Array, step_size: float,
                  noise_std: float, grad_clip: float | None = None) -> Array:
    """One step ``clip(x - step_size/2 clip(grad_x sum E(x)) + noise_std noise, -1, 1)``; shapes of ``x``."""
    grad = jax.grad(lambda y: jnp.sum(energy(y)))(x)
    if grad_clip is not None:
        grad = jnp.clip(grad, -grad_clip, grad_clip)
    return jnp.clip(x - 0.5 * step_size * grad + noise_std * noise, -1.0, 1.0)


def langevin_chain(energy: Callable[[Array], Array], x0: Array, key: Array, steps: int, step_size: float,
                   noise_std: float, unroll: int | bool = 1, grad_clip: float | None = None) -> Array:
    """``steps`` Langevin steps from ``x0`` (a ``lax.scan``); returns the chains' ends, shape of ``x0``."""

    def body(x, k):
        return langevin_step(energy, x, jax.random.normal(k, x.shape), step_size, noise_std, grad_clip), None

    x, _ = jax.lax.scan(body, x0, jax.random.split(key, steps), unroll=unroll)
    return x


def contrastive_divergence_loss(e_pos: Array, e_neg: Array, alpha: float) -> tuple[Array, dict[str, Array]]:
    """``mean E+ - mean E- + alpha mean(E+^2 + E-^2)`` and its parts; ``(B,)`` energies -> scalar."""
    cd = jnp.mean(e_pos) - jnp.mean(e_neg)
    reg = jnp.mean(e_pos**2 + e_neg**2)
    return cd + alpha * reg, {"cd": cd, "energy_pos": jnp.mean(e_pos), "energy_neg": jnp.mean(e_neg)}


class EnergyTrainer(Trainer):
    """Contrastive divergence for an energy net ``E: (B, H, W, C) -> (B,)`` (module docstring)."""

    config_class = EnergyConfig
    config: EnergyConfig

    def init_extra_state(self) -> dict[str, Array]:
        key = jax.random.PRNGKey(self.config.seed + 7919)
        shape = (self.config.buffer_size, *self.config.image_shape)
        return {"buffer": jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)}

    def before_update(self, extra, model, batch, rng):
        require(batch, ["images"], type(self).__name__)
        refuse_mask(batch, type(self).__name__)
        x = batch["images"]
        shape = tuple(self.config.image_shape)
        if jnp.ndim(x) != 4 or tuple(jnp.shape(x)[1:]) != shape or not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
            raise ValueError(
                f"EnergyTrainer: batch['images'] must be float (B, {', '.join(map(str, shape))}) in [-1, 1] "
                f"(EnergyConfig.image_shape), got shape {jnp.shape(x)} dtype {jnp.asarray(x).dtype}"
            )
        negatives, buffer = self.sample_negatives(model, extra["buffer"], x.shape[0], rng)
        return {"buffer": buffer}, {**batch, "negatives": negatives}

    def sample_negatives(self, model: nnx.Module, buffer: Array, n: int, key: Array) -> tuple[Array, Array]:
        """``n`` chains from the buffer (or noise) run under ``model``; returns ``(samples, new buffer)``."""
        cfg = self.config
        k_idx, k_use, k_noise, k_chain = jax.random.split(key, 4)
        idx = jax.random.randint(k_idx, (n,), 0, buffer.shape[0])
        use = jax.random.uniform(k_use, (n,)) < cfg.buffer_prob
        noise = jax.random.uniform(k_noise, (n, *buffer.shape[1:]), buffer.dtype, -1.0, 1.0)
        start = jnp.where(use[:, None, None, None], buffer[idx], noise)
        samples = jax.lax.stop_gradient(
            langevin_chain(model, start, k_chain, cfg.langevin_steps, cfg.step_size, cfg.noise_std, cfg.unroll,
                           cfg.grad_clip)
        )
        return samples, buffer.at[idx].set(samples)

    def compute_loss(self, model: nnx.Module, batch: Mapping[str, Array], rng: Array) -> tuple[Array, dict[str, Any]]:
        pos, neg = batch["images"], batch["negatives"]
        e_pos, e_neg = model(pos), model(neg)
        loss, metrics = contrastive_divergence_loss(e_pos, e_neg, self.config.alpha)
        if self.config.grad_norm_weight > 0:
            g = jax.grad(lambda x: jnp.sum(model(x)))(pos)
            gnorm2 = jnp.mean(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1))
            loss = loss + self.config.grad_norm_weight * gnorm2
            metrics["energy_grad_norm2"] = gnorm2
        return loss, metrics

    def sample(self, n: int, key: Array, *, steps: int | None = None, from_buffer: bool = True) -> Array:
        """``n`` samples ``(n, H, W, C)``: chains from the replay buffer (or from noise with
        ``from_buffer=False``) run ``steps`` (default ``langevin_steps``) more Langevin steps."""
        cfg = self.config
        k_start, k_chain = jax.random.split(key)
        buffer = self.train_state["extra"]["buffer"]
        if from_buffer:
            start = buffer[jax.random.choice(k_start, buffer.shape[0], (n,), replace=n > buffer.shape[0])]
        else:
            start = jax.random.uniform(k_start, (n, *buffer.shape[1:]), buffer.dtype, -1.0, 1.0)
        return _chain(self.model, start, k_chain, steps or cfg.langevin_steps, cfg.step_size, cfg.noise_std,
                      cfg.grad_clip)


@nnx.jit(static_argnums=(3, 4, 5, 6))
def _chain(model, start, key, steps, step_size, noise_std, grad_clip):
    return langevin_chain(model, start, key, steps, step_size, noise_std, grad_clip=grad_clip)
