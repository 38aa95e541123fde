"""DDPM training of a denoiser (epsilon or v prediction) with an EMA and classifier-free guidance.

Objective (Ho et al., 2020, "simple" loss; v-prediction: Salimans & Ho, 2022)::

    k ~ U{0..T-1},  eps ~ N(0, I),  x_k = sqrt(ab_k) x_0 + sqrt(1 - ab_k) eps
    target = eps                                    (prediction="epsilon")
           = sqrt(ab_k) eps - sqrt(1 - ab_k) x_0    (prediction="v")
    loss   = mean over samples of mean_pixels (model(x_k, k / T, y) - target)^2

with the label ``y`` replaced by the null label with probability
``cond_drop_prob`` (classifier-free guidance). The EMA of the parameters is
updated inside the compiled step (``train_state["extra"]["ema"]``) and is
what :meth:`DiffusionTrainer.sample` uses. Samplers: DDPM ancestral and DDIM
with ``eta`` (:mod:`artifex_rl.generative.samplers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from artifex_rl.generative.denoising import DenoisingConfig, DenoisingTrainer, masked_mean_loss
from artifex_rl.generative.samplers import diffusion_sample
from artifex_rl.generative.schedules import SCHEDULES, make_schedule

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiffusionConfig(DenoisingConfig):
    """:class:`DiffusionTrainer` settings (plus :class:`DenoisingConfig`'s EMA and label dropout).

    Attributes:
      prediction: ``"epsilon"`` (the noise) or ``"v"`` (the velocity ``sqrt(ab) eps - sqrt(1 - ab) x0``).
      schedule: ``"linear"`` or ``"cosine"`` (:mod:`artifex_rl.generative.schedules`).
      num_timesteps: ``T``, the number of noise levels.
      beta_start, beta_end: the linear schedule's ends at ``T = 1000`` (scaled by ``1000 / T``).
    """

    prediction: str = "epsilon"
    schedule: str = "cosine"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prediction not in ("epsilon", "v"):
            raise ValueError(f"prediction must be 'epsilon' or 'v', got {self.prediction!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        make_schedule(self.schedule, self.num_timesteps, beta_start=self.beta_start, beta_end=self.beta_end)


def diffusion_target(x0: Array, eps: Array, alpha_bar: Array, prediction: str) -> Array:
    """The regression target: ``eps`` or ``v = sqrt(ab) eps - sqrt(1 - ab) x0`` (``alpha_bar (B,)``)."""
    if prediction == "epsilon":
        return eps
    ab = alpha_bar.reshape(-1, *([1] * (x0.ndim - 1)))
    return jnp.sqrt(ab) * eps - jnp.sqrt(1.0 - ab) * x0


class DiffusionTrainer(DenoisingTrainer):
    """DDPM training of ``model(x (B, 8, 8, C), t (B,), labels (B,)) -> (B, 8, 8, C)``.

    Batches: ``{"images" float (B, 8, 8, C) in [-1, 1], "labels" int (B,)}``
    (labels only for a class-conditional model), optionally ``"mask" (B,)``.
    """

    config_class = DiffusionConfig

    def __init__(self, model, optimizer, config: DiffusionConfig | None = None, **kwargs: Any):
        super().__init__(model, optimizer, config, **kwargs)
        cfg = self.config
        self.schedule = make_schedule(cfg.schedule, cfg.num_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end)

    def compute_loss(self, model, batch: Mapping[str, Array], rng: Array):
        x0 = self.images_of(batch)
        k_t, k_noise, k_drop = jax.random.split(rng, 3)
        b = x0.shape[0]
        steps = jax.random.randint(k_t, (b,), 0, self.config.num_timesteps)
        eps = jax.random.normal(k_noise, x0.shape, x0.dtype)
        alpha_bar = jnp.asarray(self.schedule.alpha_bars)[steps]
        ab = alpha_bar[:, None, None, None]
        x_t = jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps
        pred = model(x_t, steps.astype(jnp.float32) / self.config.num_timesteps, self.training_labels(batch, k_drop))
        per_sample = jnp.mean(jnp.square(pred - diffusion_target(x0, eps, alpha_bar, self.config.prediction)), axis=(1, 2, 3))
        return masked_mean_loss(per_sample, batch), {}

    def sampler(
        self, *, num_steps: int = 50, method: str = "ddim", eta: float = 0.0, guidance: float = 1.0,
        clip_x0: bool = True, return_chain: bool = False,
    ):
        """A pure ``(params, model_state, key, labels (B,)) -> x0 (B, 8, 8, C)`` (see
        :func:`~artifex_rl.generative.samplers.diffusion_sample`); the initial noise is
        ``normal(split(key)[0])``, the steps' noise comes from ``split(key)[1]``."""
        self.check_guidance(guidance)

        def run(params, model_state, key, labels):
            k_noise, k_steps = jax.random.split(key)
            noise = jax.random.normal(k_noise, (labels.shape[0], 8, 8, self.image_channels))
            return diffusion_sample(
                self.model_fn(params, model_state), self.schedule, noise, k_steps, self.sample_labels(labels),
                num_steps=num_steps, method=method, eta=eta, guidance=guidance, null_label=self.null_label,
                prediction=self.config.prediction, clip_x0=clip_x0, return_chain=return_chain,
            )

        return run


__all__ = ["DiffusionConfig", "DiffusionTrainer", "diffusion_target"]
