"""Conditional flow matching on the linear (rectified-flow) path, optional minibatch OT pairing, EMA.

Objective (Lipman et al., 2023; Liu et al., 2023; time as in SD3, Esser et al., 2024:
``t = 1`` is noise, ``t = 0`` data)::

    t ~ U(0, 1),  z ~ N(0, I),  x_t = (1 - t) x_0 + t z
    target = dx_t/dt = z - x_0
    loss   = mean over samples of mean_pixels (model(x_t, t, y) - target)^2

With ``ot_pairing=True`` (OT-CFM, Tong et al., 2024) each batch's noise is
re-assigned to its images by a minibatch optimal-transport plan (squared
Euclidean cost) before the loss. The exact assignment
(``scipy.optimize.linear_sum_assignment``) runs on the host and cannot be
jitted; here :func:`greedy_assignment` does it inside ``prepare_batch`` (in
the compiled step): rows in a random order each take their nearest unused
noise, a ``fori_loop`` of ``B`` argmins over a ``(B, B)`` cost, ``O(B^2)``.
It is an approximation of the exact plan (tests compare its cost with
scipy's), which is what OT-CFM needs: straighter paths than the independent
pairing, not the optimum. Samplers: Euler/Heun ODE and the Flow-GRPO SDE
(:mod:`artifex_rl.generative.samplers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from artifex_rl.generative.denoising import DenoisingConfig, DenoisingTrainer, masked_mean_loss
from artifex_rl.generative.samplers import flow_ode_sample, flow_sde_sample

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowConfig(DenoisingConfig):
    """:class:`FlowTrainer` settings (plus :class:`DenoisingConfig`'s EMA and label dropout).

    Attributes:
      ot_pairing: pair each batch's noise with its images by :func:`greedy_assignment` (OT-CFM).
    """

    ot_pairing: bool = False


def flow_interpolant(x0: Array, noise: Array, t: Array) -> tuple[Array, Array]:
    """``(x_t, target)``: ``x_t = (1 - t) x0 + t noise`` and ``target = noise - x0`` (``t (B,)``)."""
    tb = t.reshape(-1, *([1] * (x0.ndim - 1)))
    return (1.0 - tb) * x0 + tb * noise, noise - x0


def greedy_assignment(cost: Array, order: Array) -> Array:
    """A permutation ``perm (B,)`` pairing row ``i`` with column ``perm[i]`` (jittable).

    Rows are visited in ``order``; each takes the cheapest column not yet taken.
    """
    b = cost.shape[0]

    def body(i, carry):
        perm, taken = carry
        row = order[i]
        j = jnp.argmin(jnp.where(taken, jnp.inf, cost[row]))
        return perm.at[row].set(j), taken.at[j].set(True)

    perm, _ = jax.lax.fori_loop(0, b, body, (jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool)))
    return perm


def ot_pair_noise(images: Array, noise: Array, rng: Array) -> Array:
    """``noise`` re-ordered so row ``i`` is (approximately) OT-paired with ``images[i]``."""
    x = images.reshape(images.shape[0], -1)
    z = noise.reshape(noise.shape[0], -1)
    cost = jnp.sum(x**2, 1)[:, None] + jnp.sum(z**2, 1)[None, :] - 2.0 * x @ z.T
    return noise[greedy_assignment(cost, jax.random.permutation(rng, x.shape[0]))]


class FlowTrainer(DenoisingTrainer):
    """Flow matching of a velocity field ``model(x (B, 8, 8, C), t (B,), labels (B,))``.

    Batches as for :class:`~artifex_rl.generative.diffusion.DiffusionTrainer`.
    """

    config_class = FlowConfig

    def prepare_batch(self, model, batch: dict[str, Any], rng: Array, frozen) -> dict[str, Any]:
        if not self.config.ot_pairing:
            return batch
        images = self.images_of(batch)
        k_noise, k_order = jax.random.split(rng)
        noise = jax.random.normal(k_noise, images.shape, images.dtype)
        return {**batch, "noise": ot_pair_noise(images, noise, k_order)}

    def compute_loss(self, model, batch: Mapping[str, Array], rng: Array):
        x0 = self.images_of(batch)
        k_t, k_noise, k_drop = jax.random.split(rng, 3)
        noise = batch["noise"] if "noise" in batch else jax.random.normal(k_noise, x0.shape, x0.dtype)
        t = jax.random.uniform(k_t, (x0.shape[0],))
        x_t, target = flow_interpolant(x0, noise, t)
        pred = model(x_t, t, self.training_labels(batch, k_drop))
        per_sample = jnp.mean(jnp.square(pred - target), axis=(1, 2, 3))
        return masked_mean_loss(per_sample, batch), {}

    def sampler(
        self, *, num_steps: int = 32, method: str = "euler", noise_level: float = 0.0, guidance: float = 1.0,
        return_chain: bool = False,
    ):
        """A pure ``(params, model_state, key, labels (B,)) -> x0`` function.

        ``method="euler"|"heun"``: the ODE (``noise_level`` must be 0); ``"sde"``:
        the Flow-GRPO SDE with ``sigma_t = noise_level sqrt(t / (1 - t))``.
        """
        if method not in ("euler", "heun", "sde"):
            raise ValueError(f"method must be 'euler', 'heun' or 'sde', got {method!r}")
        if method != "sde" and noise_level != 0.0:
            raise ValueError(f"noise_level={noise_level} needs method='sde'; the {method!r} ODE sampler has no noise")
        self.check_guidance(guidance)

        def run(params, model_state, key, labels):
            k_noise, k_steps = jax.random.split(key)
            noise = jax.random.normal(k_noise, (labels.shape[0], 8, 8, self.image_channels))
            fn = self.model_fn(params, model_state)
            common = dict(num_steps=num_steps, guidance=guidance, null_label=self.null_label)
            if method == "sde":
                return flow_sde_sample(fn, noise, k_steps, self.sample_labels(labels), noise_level=noise_level,
                                       return_chain=return_chain, **common)
            return flow_ode_sample(fn, noise, self.sample_labels(labels), method=method, **common)

        return run


__all__ = ["FlowConfig", "FlowTrainer", "flow_interpolant", "greedy_assignment", "ot_pair_noise"]
