"""A sampler's chain read as a policy: Gaussian steps, their log-densities and KLs.

Policy-gradient methods on diffusion and flow samplers (DDPO, Black et al.
2023; DPOK, Fan et al. 2023; Flow-GRPO, Liu et al. 2025) treat sampling as an
MDP: the state is ``(condition, t, x_t)``, the action is the next latent
``x_{t-1}``, the policy is the sampler's Gaussian step ``N(mu_theta(x_t, t, c),
sigma_t^2 I)`` and the reward comes at the end. This module holds what a
trainer needs of such a policy, with no model in it:

* :class:`TrajectoryPolicy` -- the protocol: ``rollout`` a chain, ``score`` its
  stored steps under (new) parameters, ``kl`` to a reference's scores.
* :func:`gaussian_step_log_prob`, :func:`gaussian_step_kl` -- the per-step
  log-density and the closed-form KL between two Gaussian steps of one
  standard deviation, both as the **mean over pixels** (DDPO's convention:
  summed over the pixels of a large image the log-ratio overflows ``exp``;
  :func:`gaussian_step_log_prob` with ``reduce="sum"`` is the true density).

:class:`artifex_rl.generative.DenoisingChainPolicy` implements the protocol
for the DDIM/DDPM and flow-SDE samplers.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

Array = jax.Array


class Trajectory(NamedTuple):
    """One sampled chain per row.

    Attributes:
      samples: ``(B, ...)``: the final sample ``x_0`` (what the reward judges).
      states: ``(B, S + 1, ...)``: ``x_T, ..., x_0``; step ``i`` goes from
        ``states[:, i]`` to ``states[:, i + 1]``.
    """

    samples: Array
    states: Array


class StepScores(NamedTuple):
    """Scores of chosen steps ``(B, K)`` of stored chains under one set of parameters.

    Attributes:
      log_probs: ``(B, K)`` per-pixel mean log-density of each step's action.
      means: ``(B, K, ...)`` the Gaussian means ``mu_theta`` (for the closed-form KL).
      stds: ``(B, K)`` the steps' standard deviations (fixed by the sampler, not trained).
    """

    log_probs: Array
    means: Array
    stds: Array


@runtime_checkable
class TrajectoryPolicy(Protocol):
    """A policy whose actions are the steps of a sampling chain (see the module docstring).

    The trainers call, inside their compiled step:

    * ``rollout(model, conditions (B,), key) -> Trajectory`` (no gradient);
    * ``training_steps(key, batch_size) -> (B, K) int``: which stochastic
      steps of each chain to train on (all, or a random fraction);
    * ``score(model, conditions (B,), states (B, S + 1, ...), steps (B, K)) -> StepScores``;
    * ``kl(scores, reference_means) -> (B, K)`` and ``entropy(scores) -> (B, K)``.
    """

    def rollout(self, model: Any, conditions: Array, key: Array) -> Trajectory: ...

    def training_steps(self, key: Array, batch_size: int) -> Array: ...

    def score(self, model: Any, conditions: Array, states: Array, steps: Array) -> StepScores: ...

    def kl(self, scores: StepScores, reference_means: Array) -> Array: ...

    def entropy(self, scores: StepScores) -> Array: ...


@runtime_checkable
class PreferenceLikelihood(Protocol):
    """What DPO needs of a model whose samples have no tractable log-likelihood (Diffusion-DPO).

    * ``draw(key, batch_size) -> dict`` of per-pair randomness (e.g. a noise
      level and a noise image) shared by the winner, the loser, the policy
      and the reference;
    * ``pair_log_likelihoods(model, conditions (B,), chosen (B, ...), rejected (B, ...), draw)``
      ``-> (chosen (B,), rejected (B,))``: the stand-ins for ``log p`` that
      DPO's implicit reward compares.
    """

    def draw(self, key: Array, batch_size: int) -> dict[str, Array]: ...

    def pair_log_likelihoods(
        self, model: Any, conditions: Array, chosen: Array, rejected: Array, draw: dict[str, Array]
    ) -> tuple[Array, Array]: ...


def _pixel_axes(x: Array, leading: int) -> tuple[int, ...]:
    return tuple(range(leading, x.ndim))


def _per_row(std: Array, x: Array, leading: int) -> Array:
    std = jnp.asarray(std, jnp.float32)
    return std.reshape(std.shape + (1,) * (x.ndim - std.ndim)) if std.ndim == leading else std


def gaussian_step_log_prob(x_next: Array, mean: Array, std: Array, *, leading: int = 2, reduce: str = "mean") -> Array:
    """``log N(x_next; mean, std^2 I)`` of each step, over the pixels.

    Args:
      x_next, mean: ``(*lead, ...)`` with ``leading`` leading axes (e.g. ``(B, K)``).
      std: ``(*lead)`` (one std per step) or broadcastable to ``x_next``; > 0.
      reduce: ``"mean"`` over pixels (the trainers' convention) or ``"sum"``
        (the density of the whole image).

    Returns:
      ``(*lead)`` float32.
    """
    std = _per_row(std, x_next, leading)
    z = (x_next.astype(jnp.float32) - mean.astype(jnp.float32)) / std
    per_pixel = -0.5 * jnp.square(z) - jnp.log(std) - 0.5 * math.log(2.0 * math.pi)
    per_pixel = jnp.broadcast_to(per_pixel, x_next.shape)
    axes = _pixel_axes(x_next, leading)
    if reduce == "mean":
        return jnp.mean(per_pixel, axis=axes)
    if reduce == "sum":
        return jnp.sum(per_pixel, axis=axes)
    raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")


def gaussian_step_kl(mean: Array, reference_mean: Array, std: Array, *, leading: int = 2) -> Array:
    """``KL(N(mean, s^2 I) || N(reference_mean, s^2 I)) = ||mean - ref||^2 / (2 s^2)``, per pixel (mean).

    Returns ``(*lead)`` float32; exactly 0 where the means agree.
    """
    std = _per_row(std, mean, leading)
    per_pixel = jnp.square(mean.astype(jnp.float32) - reference_mean.astype(jnp.float32)) / (2.0 * jnp.square(std))
    return jnp.mean(jnp.broadcast_to(per_pixel, mean.shape), axis=_pixel_axes(mean, leading))


def gaussian_step_entropy(std: Array) -> Array:
    """Per-pixel entropy ``0.5 log(2 pi e s^2)`` of a Gaussian step (constant in the parameters)."""
    return 0.5 * jnp.log(2.0 * math.pi * math.e * jnp.square(jnp.asarray(std, jnp.float32)))


__all__ = [
    "PreferenceLikelihood",
    "StepScores",
    "Trajectory",
    "TrajectoryPolicy",
    "gaussian_step_entropy",
    "gaussian_step_kl",
    "gaussian_step_log_prob",
]
