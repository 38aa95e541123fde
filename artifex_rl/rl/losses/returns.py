"""Discounted returns and GAE: one-trajectory functions and their batched forms.

The one-trajectory functions follow rlax: time-major ``(T,)`` inputs and a
per-step discount ``discount_t = gamma * (1 - done_t)``. The batched API the
trainers use (``compute_*``) takes rewards ``(..., T)`` with *time on the last
axis*, ``gamma`` and ``dones``, and maps the one-trajectory functions over the
leading axes.

``dones[..., t] = 1`` means the episode ends *after* step ``t``: nothing is
bootstrapped or carried over from ``t + 1`` into ``t``, so one row may hold
several episodes back to back. Where a discount is 0 the next step's value is
*selected out*, not multiplied by 0, so a NaN/inf in padding after an episode
end cannot leak back as ``0 * NaN``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from artifex_rl.rl.losses._common import ArrayLike, as_float, check_same_shape

Array = jax.Array


def _discounted_sum(x: Array, discount: Array) -> Array:
    """``y_t = x_t + discount_t * y_{t+1}``, ``y_T = 0``, for one trajectory ``(T,)``."""

    def step(next_y: Array, xs: tuple[Array, Array]) -> tuple[Array, Array]:
        x_t, discount_t = xs
        y_t = x_t + jnp.where(discount_t == 0, 0.0, discount_t * next_y)
        return y_t, y_t

    _, ys = lax.scan(step, jnp.zeros((), x.dtype), (x, discount.astype(x.dtype)), reverse=True)
    return ys


# Jitted at module level so eager callers (batch preparation outside the
# compiled step) hit the compilation cache instead of re-tracing the scan on
# every call; inside an outer ``jit`` it is simply inlined.
_batched_discounted_sum = jax.jit(jnp.vectorize(_discounted_sum, signature="(t),(t)->(t)"))


def discounted_returns(r_t: ArrayLike, discount_t: ArrayLike, bootstrap_value: ArrayLike = 0.0) -> Array:
    """Discounted returns of one trajectory: ``G_t = r_t + discount_t * G_{t+1}``.

    Args:
      r_t: ``(T,)`` rewards.
      discount_t: ``(T,)`` discounts, ``gamma * (1 - done_t)``.
      bootstrap_value: ``()``, ``G_T``: the value of the state after the last step.

    Returns:
      ``(T,)`` returns.

    References:
      Sutton & Barto 2018, "Reinforcement Learning: An Introduction", eq. 3.9.
    """
    r_t, discount_t = as_float(r_t), as_float(discount_t)
    if r_t.ndim != 1:
        raise ValueError(f"r_t has shape {r_t.shape}, expected (T,)")
    check_same_shape("discount_t", discount_t, "r_t", r_t)
    # Fold the bootstrap into the last reward: G_{T-1} = r_{T-1} + discount_{T-1} * G_T.
    tail = jnp.where(discount_t[-1] == 0, 0.0, discount_t[-1] * as_float(bootstrap_value))
    return _discounted_sum(r_t.at[-1].add(tail), discount_t)


def generalized_advantage_estimation(
    r_t: ArrayLike, discount_t: ArrayLike, values: ArrayLike, lambda_: float | Array
) -> Array:
    """GAE of one trajectory.

    ``delta_t = r_t + discount_t * V_{t+1} - V_t`` and
    ``A_t = delta_t + discount_t * lambda * A_{t+1}``, ``A_T = 0``.

    Args:
      r_t: ``(T,)`` rewards.
      discount_t: ``(T,)`` discounts, ``gamma * (1 - done_t)``.
      values: ``(T + 1,)``: ``V(s_0) .. V(s_T)``, the last one the bootstrap value.
      lambda_: GAE ``lambda``; ``0`` gives TD(0) errors, ``1`` Monte-Carlo
        returns minus ``V_t``.

    Returns:
      ``(T,)`` advantages; the value targets are ``A_t + V_t``.

    References:
      Schulman et al. 2016, "High-Dimensional Continuous Control Using
      Generalized Advantage Estimation" (arXiv:1506.02438), eq. 16.
    """
    r_t, discount_t, values = as_float(r_t), as_float(discount_t), as_float(values)
    if r_t.ndim != 1 or values.shape != (r_t.shape[0] + 1,):
        raise ValueError(f"r_t has shape {r_t.shape} and values {values.shape}, expected (T,) and (T + 1,)")
    check_same_shape("discount_t", discount_t, "r_t", r_t)
    deltas = r_t + jnp.where(discount_t == 0, 0.0, discount_t * values[1:]) - values[:-1]
    return _discounted_sum(deltas, discount_t * lambda_)


def _check_time_series(name: str, x: Array) -> None:
    if x.ndim < 1:
        raise ValueError(f"{name} has shape {x.shape}, expected (T,) or (B, T) with time on the last axis")


def _discounts(gamma: float | Array, dones: ArrayLike | None, rewards: Array) -> Array:
    """``gamma * (1 - dones)`` in the dtype of ``rewards`` (``gamma`` everywhere when ``dones`` is None)."""
    if dones is None:
        return jnp.full_like(rewards, gamma)
    dones = jnp.asarray(dones)
    check_same_shape("dones", dones, "rewards", rewards)
    return gamma * (1.0 - dones.astype(rewards.dtype))


def compute_discounted_returns(
    rewards: ArrayLike, gamma: float | Array, dones: ArrayLike | None = None
) -> Array:
    """Discounted returns, reset at episode ends.

    ``G_t = r_t + gamma * (1 - done_t) * G_{t+1}`` with ``G_T = 0``, i.e.
    ``G_t = sum_{k>=t} gamma^(k-t) r_k`` up to and including the first step
    ``k >= t`` whose ``done_k = 1``.

    Args:
      rewards: ``(T,)`` one time-ordered trajectory (possibly several
        episodes separated by dones) or ``(B, T)`` ``B`` trajectories; time is
        the last axis.
      gamma: discount factor.
      dones: like ``rewards`` (bool or float); ``dones[t] = 1`` ends the
        episode after step ``t``. ``None``: no episode ends inside the data
        (and nothing is bootstrapped after the last step).

    Returns:
      ``G`` with the shape of ``rewards`` (float).

    References:
      Williams 1992, "Simple Statistical Gradient-Following Algorithms for
      Connectionist Reinforcement Learning".
    """
    rewards = as_float(rewards)
    _check_time_series("rewards", rewards)
    return _batched_discounted_sum(rewards, _discounts(gamma, dones, rewards))


def _values_with_bootstrap(values: Array, rewards: Array, last_value: ArrayLike | None) -> Array:
    """``values`` as ``(..., T + 1)`` (``V(s_T)`` last) from the accepted layouts."""
    steps = rewards.shape[-1]
    if values.shape[:-1] != rewards.shape[:-1] or values.shape[-1] not in (steps, steps + 1):
        raise ValueError(
            f"values has shape {values.shape}, expected {rewards.shape[:-1] + (steps + 1,)} "
            f"(with the bootstrap value V(s_T) last) or {rewards.shape} (rewards has shape {rewards.shape})"
        )
    if values.shape[-1] == steps + 1:
        if last_value is not None:
            raise ValueError(
                f"values has shape {values.shape} (T+1 entries, already holding V(s_T)) and last_value "
                "was given too; pass one or the other"
            )
        return values
    if last_value is None:
        bootstrap = jnp.zeros(rewards.shape[:-1] + (1,), values.dtype)
    else:
        last_value = as_float(last_value)
        if last_value.shape != rewards.shape[:-1]:
            raise ValueError(f"last_value has shape {last_value.shape}, expected {rewards.shape[:-1]}")
        bootstrap = last_value[..., None].astype(values.dtype)
    return jnp.concatenate([values, bootstrap], axis=-1)


_batched_gae = jax.jit(jnp.vectorize(generalized_advantage_estimation, signature="(t),(t),(s),()->(t)"))


def compute_gae_advantages(
    rewards: ArrayLike,
    values: ArrayLike,
    dones: ArrayLike | None,
    gamma: float | Array,
    gae_lambda: float | Array,
    last_value: ArrayLike | None = None,
) -> Array:
    """Generalized Advantage Estimation over ``(..., T)`` trajectories.

    ``delta_t = r_t + gamma * V_{t+1} * (1 - done_t) - V_t``
    ``A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}``, ``A_T = 0``.

    Args:
      rewards: ``(T,)`` or ``(B, T)``; time is the last axis.
      values: ``V(s_t)`` in one of two layouts:

        * ``(..., T + 1)``: the last entry is ``V(s_T)``, the bootstrap value
          of the state after the last step;
        * ``(..., T)``: ``V(s_T)`` is ``last_value`` if given, else ``0``
          (as if the data ended in a terminal state).
      dones: like ``rewards``; ``dones[t] = 1`` ends the episode after step
        ``t`` (``V_{t+1}`` then belongs to the next episode and is not used).
        ``None``: no episode ends inside the data.
      gamma: discount factor.
      gae_lambda: GAE ``lambda``.
      last_value: ``()`` or ``(B,)`` (``rewards.shape[:-1]``): ``V(s_T)``
        when ``values`` has ``T`` entries. An error with ``T + 1`` values.

    Returns:
      Advantages with the shape of ``rewards``. The value targets are
      ``advantages + V_t``: see :func:`compute_gae_returns`.

    References:
      Schulman et al. 2016 (arXiv:1506.02438), eq. 16.
    """
    rewards = as_float(rewards)
    _check_time_series("rewards", rewards)
    values = _values_with_bootstrap(as_float(values), rewards, last_value)
    discounts = _discounts(gamma, dones, rewards)
    return _batched_gae(rewards, discounts, values, jnp.asarray(gae_lambda, rewards.dtype))


def compute_gae_returns(advantages: ArrayLike, values: ArrayLike) -> Array:
    """Value targets (lambda-returns) from GAE advantages: ``R_t = A_t + V_t``.

    Args:
      advantages: ``(..., T)`` from :func:`compute_gae_advantages`.
      values: ``(..., T + 1)`` or ``(..., T)``, the same array given to
        :func:`compute_gae_advantages` (only its first ``T`` entries are used).

    Returns:
      Returns with the shape of ``advantages``.
    """
    advantages = as_float(advantages)
    values = as_float(values)
    steps = advantages.shape[-1]
    if values.shape[:-1] != advantages.shape[:-1] or values.shape[-1] not in (steps, steps + 1):
        raise ValueError(
            f"values has shape {values.shape}, expected {advantages.shape} or "
            f"{advantages.shape[:-1] + (steps + 1,)} (advantages has shape {advantages.shape})"
        )
    return advantages + values[..., :steps]


__all__ = [
    "compute_discounted_returns",
    "compute_gae_advantages",
    "compute_gae_returns",
    "discounted_returns",
    "generalized_advantage_estimation",
]
