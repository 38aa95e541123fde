"""KL divergences (sample estimators and closed forms) and the entropy bonus.

The sample estimators read log-probs of actions *sampled from the policy*;
the closed forms read whole distributions. Per-element functions return the
value at every position; :func:`compute_kl_divergence` and
:func:`compute_policy_entropy` are the seeds' masked-mean forms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from artifex_rl.distributions.categorical import categorical_entropy
from artifex_rl.rl.losses._common import (
    MAX_LOG_RATIO,
    ArrayLike,
    as_float,
    check_choice,
    check_same_shape,
    select_valid,
)
from artifex_rl.rl.losses.aggregation import masked_mean

Array = jax.Array

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(
    logp: ArrayLike, ref_logp: ArrayLike, estimator: str = "k3", max_log_ratio: float = MAX_LOG_RATIO
) -> Array:
    """Per-sample estimate of ``KL(pi || ref)`` from log-probs of actions sampled from ``pi``.

    With ``d = ref_logp - logp``:

    * ``"k1"``: ``-d`` -- unbiased, high variance, can be negative;
    * ``"k2"``: ``d**2 / 2`` -- biased, low variance, ``>= 0``;
    * ``"k3"``: ``exp(d) - d - 1`` -- unbiased, low variance, ``>= 0``.

    Stability: for ``"k3"`` only, ``d`` is clamped from *above* at
    ``max_log_ratio`` (default 20), because ``exp(d)`` overflows float32 for
    ``d > 88``. Beyond the clamp k3 saturates at ``k3(20) ~ 4.9e8`` with zero
    gradient. No lower clamp is needed (``exp(d) -> 0`` and ``k3 ~ -d - 1``
    keeps its pull back towards ``ref``).

    Args:
      logp: ``(...)`` log-probs of the sampled actions under the policy.
      ref_logp: the same shape, under the reference policy.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (a Python string).
      max_log_ratio: the k3 clamp.

    Returns:
      ``(...)`` per-sample estimates.

    References:
      Schulman 2020, "Approximating KL Divergence"; k3 in GRPO: Shao et al.
      2024, "DeepSeekMath" (arXiv:2402.03300), eq. 4.
    """
    check_choice("estimator", estimator, KL_ESTIMATORS)
    logp = as_float(logp)
    ref_logp = as_float(ref_logp)
    check_same_shape("ref_logp", ref_logp, "logp", logp)
    d = ref_logp - logp
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * jnp.square(d)
    d = jnp.minimum(d, max_log_ratio)
    # expm1(d) - d keeps precision for small |d| where exp(d) - 1 cancels.
    return jnp.expm1(d) - d


def compute_kl_divergence(
    logp: ArrayLike,
    ref_logp: ArrayLike,
    estimator: str = "k3",
    mask: ArrayLike | None = None,
    *,
    reduce: bool = True,
    max_log_ratio: float = MAX_LOG_RATIO,
) -> Array:
    """:func:`kl_estimate` reduced to its masked mean (or masked per element).

    Args:
      logp, ref_logp, estimator, max_log_ratio: as for :func:`kl_estimate`.
      mask: broadcastable to ``logp``; non-zero = valid.
      reduce: ``True`` (default): the masked mean, a scalar. ``False``: the
        per-element values, shape of ``logp``, with masked entries set to 0.

    References:
      Schulman 2020, "Approximating KL Divergence".
    """
    kl = kl_estimate(logp, ref_logp, estimator, max_log_ratio)
    return masked_mean(kl, mask) if reduce else select_valid(kl, mask)


def categorical_kl(logits: ArrayLike, ref_logits: ArrayLike) -> Array:
    """Exact ``KL(p || q) = sum_a p_a (log p_a - log q_a)`` over the last axis.

    ``p = softmax(logits)``, ``q = softmax(ref_logits)``. Actions with
    ``p_a = 0`` contribute exactly 0 (also in the gradient), even where
    ``q_a = 0``; an action with ``p_a > 0 = q_a`` makes the KL ``inf``.

    Args:
      logits: ``(..., A)`` policy logits.
      ref_logits: ``(..., A)`` reference logits.

    Returns:
      ``(...)`` per-position KL.

    References:
      Cover & Thomas 2006, "Elements of Information Theory", eq. 2.26.
    """
    logits = as_float(logits)
    ref_logits = as_float(ref_logits)
    check_same_shape("ref_logits", ref_logits, "logits", logits)
    if logits.ndim < 1:
        raise ValueError(f"logits has shape {logits.shape}, expected (..., A)")
    logp = jax.nn.log_softmax(logits, axis=-1)
    ref_logp = jax.nn.log_softmax(ref_logits, axis=-1)
    p = jnp.exp(logp)
    return jnp.sum(p * jnp.where(p > 0, logp - ref_logp, 0.0), axis=-1)


def gaussian_kl(mean: ArrayLike, log_std: ArrayLike, ref_mean: ArrayLike, ref_log_std: ArrayLike) -> Array:
    """Exact KL between diagonal Gaussians, summed over the last axis ``D``.

    ``KL(N(m, s^2) || N(m', s'^2)) = sum_d [log(s'/s) + (s^2 + (m - m')^2) / (2 s'^2) - 1/2]``.

    Args:
      mean, log_std: ``(..., D)`` the policy's (``log_std`` broadcastable).
      ref_mean, ref_log_std: ``(..., D)`` the reference's (broadcastable).

    Returns:
      ``(...)`` per-sample KL.

    References:
      Kingma & Welling 2014, "Auto-Encoding Variational Bayes", appendix B.
    """
    mean, ref_mean = as_float(mean), as_float(ref_mean)
    log_std = jnp.broadcast_to(as_float(log_std), mean.shape)
    ref_log_std = jnp.broadcast_to(as_float(ref_log_std), mean.shape)
    check_same_shape("ref_mean", ref_mean, "mean", mean)
    ratio = jnp.exp(2.0 * (log_std - ref_log_std))
    scaled_gap = jnp.square((mean - ref_mean) * jnp.exp(-ref_log_std))
    return jnp.sum(ref_log_std - log_std + 0.5 * (ratio + scaled_gap) - 0.5, axis=-1)


def compute_policy_entropy(logits: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """Mean entropy of categorical distributions given by ``logits``.

    ``H = -sum_a p_a log p_a`` with ``p = softmax(logits)`` over the last
    axis (:func:`~artifex_rl.distributions.categorical_entropy`), then the
    mean over valid positions. ``-inf`` logits (masked actions) are fine, in
    value and in gradient.

    Args:
      logits: ``(..., A)``.
      mask: broadcastable to ``logits.shape[:-1]``; non-zero = valid.

    Returns:
      Scalar masked mean entropy.

    References:
      Williams & Peng 1991, "Function Optimization using Connectionist
      Reinforcement Learning Algorithms" (the entropy bonus).
    """
    return masked_mean(categorical_entropy(logits), mask)


__all__ = [
    "KL_ESTIMATORS",
    "categorical_kl",
    "compute_kl_divergence",
    "compute_policy_entropy",
    "gaussian_kl",
    "kl_estimate",
]
