"""Group-relative advantages (GRPO) and the group statistics behind them.

A batch of ``B = num_prompts * G`` rewards holds consecutive groups of ``G``
completions of one prompt: group ``g`` is ``rewards[g*G:(g+1)*G]``. Each
reward is compared with its own group's, so no value model is needed.

A sample whose reward is not finite (or that ``valid`` marks invalid) is left
out of its group's statistics and gets advantage ``0``: one NaN reward cannot
turn a whole update into NaN, and the fraction is reported.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp

from artifex_rl.rl.losses._common import ArrayLike, as_float, check_choice

Array = jax.Array

SCALE_REWARDS = ("group", "batch", "none")


class GroupStats(NamedTuple):
    """Per-group statistics over the valid members, each ``(num_groups,)``.

    Attributes:
      mean: mean of the valid rewards (0 for a group with none).
      std: their population std (``ddof=0``).
      count: number of valid rewards.
      degenerate: ``True`` where the valid rewards are all equal (decided by
        ``max == min``, not by the std) or there are fewer than two: no
        learning signal.
    """

    mean: Array
    std: Array
    count: Array
    degenerate: Array


def _group_size(rewards: Array, group_size: int) -> int:
    if rewards.ndim != 1:
        raise ValueError(
            f"rewards has shape {rewards.shape}, expected (B,) with B = num_prompts * group_size"
        )
    try:
        group_size = operator.index(group_size)
    except TypeError:
        raise ValueError(f"group_size must be a Python int (it fixes a shape), got {group_size!r}") from None
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards has shape {rewards.shape}, expected (num_prompts * group_size,) = (k * {group_size},); "
            f"{rewards.shape[0]} is not a multiple of group_size={group_size}"
        )
    return group_size


def group_statistics(rewards: ArrayLike, group_size: int, valid: ArrayLike | None = None) -> GroupStats:
    """Mean, population std, count and degeneracy of each group's valid rewards.

    Args:
      rewards: ``(B,)`` with ``B`` a multiple of ``group_size``; invalid
        entries may hold anything (NaN included).
      group_size: Python int ``G >= 1``.
      valid: ``(B,)`` bool, ``None``: all valid.

    Returns:
      :class:`GroupStats`, each field ``(B // G,)``.

    References:
      Shao et al. 2024, "DeepSeekMath" (arXiv:2402.03300), section 4.1.2.
    """
    rewards = as_float(rewards)
    group_size = _group_size(rewards, group_size)
    valid = (
        jnp.ones(rewards.shape, bool)
        if valid is None
        else jnp.broadcast_to(jnp.asarray(valid, bool), rewards.shape)
    )
    grouped = jnp.where(valid, rewards, 0.0).reshape(-1, group_size)
    member = valid.reshape(-1, group_size)
    count = jnp.sum(member, axis=1).astype(rewards.dtype)
    mean = jnp.sum(grouped, axis=1) / jnp.maximum(count, 1.0)
    deviation = jnp.where(member, grouped - mean[:, None], 0.0)
    std = jnp.sqrt(jnp.sum(jnp.square(deviation), axis=1) / jnp.maximum(count, 1.0))
    top = jnp.max(jnp.where(member, grouped, -jnp.inf), axis=1)
    bottom = jnp.min(jnp.where(member, grouped, jnp.inf), axis=1)
    return GroupStats(mean, std, count, (top == bottom) | (count < 2))


def compute_group_advantages(
    rewards: ArrayLike,
    group_size: int,
    scale_rewards: str = "group",
    eps: float = 1e-4,
    valid: ArrayLike | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Group-relative advantages.

    With ``mu_g`` the group mean and ``sigma`` a population std (``ddof=0``;
    TRL uses ``ddof=1``, so its advantages are smaller by ``sqrt((G-1)/G)``),
    both over the group's valid, finite rewards:

    * ``"group"``: ``A = (r - mu_g) / (sigma_g + eps)`` (GRPO);
    * ``"batch"``: ``A = (r - mu_g) / (sigma_batch + eps)``, one std over all
      valid rewards (more robust when groups are small);
    * ``"none"``: ``A = r - mu_g`` (Dr. GRPO).

    A degenerate group (see :class:`GroupStats`) gets advantages of exactly
    ``0.0``, so the mean's round-off cannot leak through as a spurious
    signal; so does every invalid or non-finite reward.

    Args:
      rewards: ``(B,)`` with ``B`` a multiple of ``group_size``.
      group_size: Python int ``G >= 1``.
      scale_rewards: one of :data:`SCALE_REWARDS` (a Python string).
      eps: added to the std before dividing.
      valid: ``(B,)`` bool; ``None``: every finite reward is valid.

    Returns:
      ``(advantages (B,), metrics)`` with metrics ``frac_reward_zero_std``
      (fraction of degenerate groups), ``group_advantage_std`` (population
      std of the advantages over the batch), ``reward_std`` (mean over
      groups of the within-group std, 0 for degenerate groups) and
      ``nonfinite_reward_frac`` (fraction of rewards that are NaN or inf).

    References:
      Shao et al. 2024, "DeepSeekMath" (arXiv:2402.03300), section 4.1.2;
      Liu et al. 2025, "Understanding R1-Zero-Like Training" (arXiv:2503.20783).
    """
    check_choice("scale_rewards", scale_rewards, SCALE_REWARDS)
    rewards = as_float(rewards)
    group_size = _group_size(rewards, group_size)
    finite = jnp.isfinite(rewards)
    usable = finite if valid is None else finite & jnp.broadcast_to(jnp.asarray(valid, bool), rewards.shape)
    stats = group_statistics(rewards, group_size, usable)
    clean = jnp.where(usable, rewards, 0.0).reshape(-1, group_size)
    deviation = clean - stats.mean[:, None]
    if scale_rewards == "group":
        scaled = deviation / (stats.std[:, None] + eps)
    elif scale_rewards == "batch":
        count = jnp.maximum(jnp.sum(usable), 1)
        batch_mean = jnp.sum(clean) / count
        batch_std = jnp.sqrt(
            jnp.sum(jnp.where(usable.reshape(clean.shape), jnp.square(clean - batch_mean), 0.0)) / count
        )
        scaled = deviation / (batch_std + eps)
    else:
        scaled = deviation
    keep = ~stats.degenerate[:, None] & usable.reshape(clean.shape)
    advantages = jnp.where(keep, scaled, 0.0).reshape(-1)
    metrics = {
        "frac_reward_zero_std": jnp.mean(stats.degenerate.astype(rewards.dtype)),
        "group_advantage_std": jnp.std(advantages),
        "reward_std": jnp.mean(jnp.where(stats.degenerate, 0.0, stats.std)),
        "nonfinite_reward_frac": jnp.mean((~finite).astype(rewards.dtype)),
    }
    return advantages, metrics


__all__ = ["SCALE_REWARDS", "GroupStats", "compute_group_advantages", "group_statistics"]
