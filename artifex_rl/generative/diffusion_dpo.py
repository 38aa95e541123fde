"""Diffusion-DPO (Wallace et al., 2023): DPO's implicit reward with the denoising error as the likelihood.

A diffusion model has no tractable ``log p(x)``; Diffusion-DPO replaces it,
per pair, by the denoising error at one shared noise level ``t`` and noise
``eps`` (drawn once per pair and used for the winner, the loser, the policy
and the reference)::

    x_t   = sqrt(ab_t) x + sqrt(1 - ab_t) eps
    e(x)  = mean over pixels of (model(x_t, t, c) - target)^2     (target: eps, or v)
    L     = -log sigmoid(-beta / 2 * ((e_w - e_l)_theta - (e_w - e_l)_ref))

which is :class:`~artifex_rl.DPOTrainer`'s sigmoid loss with the sequence
log-probability replaced by ``-e / 2`` (:class:`DenoisingLikelihood`). With
``e`` a *per-pixel mean* (as in the paper's code) the differences are small
(~1e-3), so ``beta`` is large: the paper uses 5000 for Stable Diffusion;
the digits recipe uses 2000.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from artifex_rl.generative.diffusion import diffusion_target
from artifex_rl.generative.schedules import NoiseSchedule

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class DenoisingLikelihood:
    """``-e / 2`` of a diffusion model as DPO's log-likelihood (implements ``PreferenceLikelihood``).

    Attributes:
      schedule: the model's noise schedule.
      prediction: ``"epsilon"`` or ``"v"``, what the model predicts.
      image_shape: ``(H, W, C)``.

    A batch may fix the per-pair randomness with ``timesteps (B,)`` int and
    ``noise (B, H, W, C)``; otherwise :meth:`draw` draws it.
    """

    schedule: NoiseSchedule
    prediction: str = "epsilon"
    image_shape: tuple[int, int, int] = (8, 8, 1)

    def draw(self, key: Array, batch_size: int) -> dict[str, Array]:
        k_t, k_noise = jax.random.split(key)
        return {
            "timesteps": jax.random.randint(k_t, (batch_size,), 0, self.schedule.num_timesteps),
            "noise": jax.random.normal(k_noise, (batch_size, *self.image_shape)),
        }

    def denoising_errors(self, model: Any, conditions: Array | None, images: Array, draw: dict[str, Array]) -> Array:
        """``(B,)`` per-pixel mean squared error of the model's prediction at ``draw``'s noise."""
        steps, noise = draw["timesteps"], draw["noise"]
        ab = jnp.asarray(self.schedule.alpha_bars)[steps]
        ab4 = ab.reshape(-1, 1, 1, 1)
        x_t = jnp.sqrt(ab4) * images + jnp.sqrt(1.0 - ab4) * noise
        labels = None if getattr(model, "num_classes", None) is None else jnp.asarray(conditions).astype(jnp.int32)
        pred = model(x_t, steps.astype(jnp.float32) / self.schedule.num_timesteps, labels)
        return jnp.mean(jnp.square(pred - diffusion_target(images, noise, ab, self.prediction)), axis=(1, 2, 3))

    def pair_log_likelihoods(
        self, model: Any, conditions: Array, chosen: Array, rejected: Array, draw: dict[str, Array]
    ) -> tuple[Array, Array]:
        """``(-e_w / 2, -e_l / 2)``, from one forward pass of the ``2B`` noised images."""
        b = chosen.shape[0]
        both = {k: jnp.concatenate([v, v]) for k, v in draw.items()}
        conditions2 = None if conditions is None else jnp.concatenate([conditions, conditions])
        errors = self.denoising_errors(model, conditions2, jnp.concatenate([chosen, rejected]), both)
        return -errors[:b] / 2.0, -errors[b:] / 2.0


__all__ = ["DenoisingLikelihood"]
