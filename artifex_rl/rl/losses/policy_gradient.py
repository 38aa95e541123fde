"""Policy-gradient and value losses: REINFORCE, PPO's clipped surrogate, the clipped value loss.

Every loss is per element (to be reduced with :mod:`.aggregation`), except
:func:`compute_clipped_surrogate_loss`, the seeds' reduced form. Log-ratios
are clamped at :data:`MAX_LOG_RATIO` before ``exp``; low-precision inputs are
promoted to at least float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from artifex_rl.rl.losses._common import MAX_LOG_RATIO, ArrayLike, as_float, check_same_shape
from artifex_rl.rl.losses.aggregation import masked_mean

Array = jax.Array


def _broadcast_advantages(advantages: Array, log_probs: Array) -> Array:
    """Per-sequence advantages ``(B,)`` broadcast over trailing token axes ``(B, T)``.

    Only a *prefix* match is accepted: plain numpy broadcasting would align
    ``(B,)`` with the last axis of ``(B, T)`` and silently be wrong when
    ``B == T``.
    """
    if advantages.shape == log_probs.shape:
        return advantages
    if advantages.ndim < log_probs.ndim and advantages.shape == log_probs.shape[: advantages.ndim]:
        return advantages.reshape(advantages.shape + (1,) * (log_probs.ndim - advantages.ndim))
    raise ValueError(
        f"advantages has shape {advantages.shape}, expected {log_probs.shape} (the shape of log_probs) "
        f"or a prefix of it such as {log_probs.shape[:1]}"
    )


def _log_ratio(log_probs: ArrayLike, old_log_probs: ArrayLike) -> Array:
    log_probs = as_float(log_probs)
    old_log_probs = as_float(old_log_probs)
    check_same_shape("old_log_probs", old_log_probs, "log_probs", log_probs)
    return jnp.clip(log_probs - old_log_probs, -MAX_LOG_RATIO, MAX_LOG_RATIO)


def policy_gradient_per_element(log_probs: ArrayLike, advantages: ArrayLike) -> Array:
    """REINFORCE loss per element: ``-stop_gradient(A) * log pi(a | s)``.

    Args:
      log_probs: log-probs of the taken actions, any shape (``(B,)``, ``(B, T)``).
      advantages: the shape of ``log_probs`` or a prefix of it (one per sequence).

    Returns:
      Per-element loss with the shape of ``log_probs``; its gradient is the
      score-function estimator ``-A * grad log pi``.

    References:
      Williams 1992, "Simple Statistical Gradient-Following Algorithms for
      Connectionist Reinforcement Learning".
    """
    log_probs = as_float(log_probs)
    advantages = _broadcast_advantages(lax.stop_gradient(as_float(advantages)), log_probs)
    return -advantages * log_probs


def clipped_surrogate_per_element(
    log_probs: ArrayLike,
    old_log_probs: ArrayLike,
    advantages: ArrayLike,
    clip_param: float | Array,
    clip_param_high: float | Array | None = None,
) -> Array:
    """Per-element PPO clipped surrogate loss (to minimise).

    ``ratio = exp(clamp(logp - old_logp, -20, 20))``,
    ``loss = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A)``.

    The log-ratio clamp (:data:`MAX_LOG_RATIO`) keeps ``exp`` finite; it only
    acts on ratios ``> 4.9e8`` or ``< 2e-9``, where the clipped objective has
    (almost) no gradient anyway, and zeroes the gradient there.

    Args:
      log_probs: log-probs of the taken actions under the current policy,
        any shape, e.g. ``(B,)`` or per token ``(B, T)``.
      old_log_probs: same shape, under the policy that collected the data.
      advantages: the shape of ``log_probs``, or a prefix of it (``(B,)``
        for ``(B, T)`` log-probs: one advantage per sequence).
      clip_param: ``eps``, the lower clip ``1 - eps``.
      clip_param_high: ``eps_high`` for the upper clip ``1 + eps_high``
        (DAPO's clip-higher); ``None``: ``clip_param``.

    Returns:
      Per-element loss with the shape of ``log_probs``.

    References:
      Schulman et al. 2017, "Proximal Policy Optimization Algorithms"
      (arXiv:1707.06347), eq. 7; clip-higher: Yu et al. 2025, "DAPO"
      (arXiv:2503.14476), eq. 10.
    """
    log_ratio = _log_ratio(log_probs, old_log_probs)
    advantages = _broadcast_advantages(as_float(advantages), log_ratio)
    eps_high = clip_param if clip_param_high is None else clip_param_high
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - clip_param, 1.0 + eps_high)
    return -jnp.minimum(ratio * advantages, clipped * advantages)


def clipped_surrogate_metrics(
    log_probs: ArrayLike,
    old_log_probs: ArrayLike,
    clip_param: float | Array,
    mask: ArrayLike | None = None,
    clip_param_high: float | Array | None = None,
) -> dict[str, Array]:
    """Diagnostics of a PPO update, masked means over valid elements.

    * ``clip_fraction``: fraction of ratios outside ``[1 - eps, 1 + eps_high]``
      (the trust region), regardless of the advantage's sign.
    * ``approx_kl``: the k3 estimate of ``KL(old || new)`` from samples of
      the old policy, ``(ratio - 1) - log(ratio)``.

    Same arguments and log-ratio clamp as :func:`clipped_surrogate_per_element`.

    References:
      Schulman 2020, "Approximating KL Divergence" (k3); CleanRL's ``approx_kl``.
    """
    log_ratio = _log_ratio(log_probs, old_log_probs)
    eps_high = clip_param if clip_param_high is None else clip_param_high
    ratio = jnp.exp(log_ratio)
    clipped = (ratio < 1.0 - clip_param) | (ratio > 1.0 + eps_high)
    return {
        "clip_fraction": masked_mean(clipped.astype(ratio.dtype), mask),
        "approx_kl": masked_mean(jnp.expm1(log_ratio) - log_ratio, mask),
    }


def compute_clipped_surrogate_loss(
    log_probs: ArrayLike,
    old_log_probs: ArrayLike,
    advantages: ArrayLike,
    clip_param: float | Array,
    mask: ArrayLike | None = None,
    clip_param_high: float | Array | None = None,
    *,
    return_metrics: bool = False,
) -> Array | tuple[Array, dict[str, Array]]:
    """PPO clipped surrogate loss, a scalar: the masked mean over valid elements.

    ``loss = masked_mean(-min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A))``
    with ``ratio = exp(clamp(logp - old_logp, -20, 20))``; see
    :func:`clipped_surrogate_per_element` for the arguments. As the seeds
    write it, ``loss = compute_clipped_surrogate_loss(...)`` is the loss
    itself, ready for ``loss + vf_coeff * value_loss`` and ``jax.grad``. The
    update's diagnostics come from :func:`clipped_surrogate_metrics` (same
    arguments), or from ``return_metrics=True``. For GRPO's token
    aggregations use the per-element loss with
    :func:`~artifex_rl.rl.losses.aggregation.token_loss_term` instead.

    Args:
      log_probs: ``(...)`` log-probs of the taken actions under the current policy.
      old_log_probs: the same shape, under the policy that collected the data.
      advantages: the shape of ``log_probs`` or a prefix of it.
      clip_param: ``eps``.
      mask: optional, the shape of ``log_probs``; non-zero = valid element.
      clip_param_high: ``eps_high`` (DAPO's clip-higher); ``None``: ``clip_param``.
      return_metrics: also return ``{"clip_fraction", "approx_kl"}``.

    Returns:
      The scalar loss; with ``return_metrics=True``, ``(loss, metrics)``.

    References:
      Schulman et al. 2017 (arXiv:1707.06347), eq. 7.
    """
    per_element = clipped_surrogate_per_element(
        log_probs, old_log_probs, advantages, clip_param, clip_param_high
    )
    loss = masked_mean(per_element, mask)
    if not return_metrics:
        return loss
    return loss, clipped_surrogate_metrics(log_probs, old_log_probs, clip_param, mask, clip_param_high)


def value_loss_per_element(
    values: ArrayLike,
    returns: ArrayLike,
    old_values: ArrayLike | None = None,
    clip_param: float | Array | None = None,
) -> Array:
    """Squared-error value loss per element, optionally clipped around the old values.

    Unclipped: ``0.5 * (V - R)^2``. With ``old_values`` and ``clip_param``:
    ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)``,
    the pessimistic clipped form of the PPO baselines and CleanRL.

    Args:
      values: ``(...)`` predictions ``V(s)`` of the current model.
      returns: the same shape, the targets ``R`` (e.g. GAE lambda-returns).
      old_values: the same shape, the predictions when the data was collected;
        required with ``clip_param``.
      clip_param: ``eps``; ``None``: no clipping.

    Returns:
      Per-element loss with the shape of ``values``.

    References:
      Schulman et al. 2017 (arXiv:1707.06347), eq. 9; Andrychowicz et al.
      2021, "What Matters in On-Policy RL" (arXiv:2006.05990), on clipping.
    """
    values, returns = as_float(values), as_float(returns)
    check_same_shape("returns", returns, "values", values)
    loss = jnp.square(values - returns)
    if clip_param is not None:
        if old_values is None:
            raise ValueError("value_loss_per_element: clip_param needs old_values (the shape of values)")
        old_values = as_float(old_values)
        check_same_shape("old_values", old_values, "values", values)
        clipped = old_values + jnp.clip(values - old_values, -clip_param, clip_param)
        loss = jnp.maximum(loss, jnp.square(clipped - returns))
    return 0.5 * loss


__all__ = [
    "MAX_LOG_RATIO",
    "clipped_surrogate_metrics",
    "clipped_surrogate_per_element",
    "compute_clipped_surrogate_loss",
    "policy_gradient_per_element",
    "value_loss_per_element",
]
