"""RL batches of sampling chains: what GRPO and REINFORCE do with a :class:`TrajectoryPolicy` (DDPO, Flow-GRPO).

A chain policy (e.g. :class:`artifex_rl.generative.DenoisingChainPolicy`)
turns the GRPO step into the published recipes for diffusion and flow
samplers. Per prompt (a condition, or a dummy for an unconditional model)
``G`` chains are rolled out with the current parameters, the final samples
are rewarded, group-normalised advantages are computed, and the clipped
surrogate runs over each chain's trained steps as if they were tokens::

    A_i      = group advantage of sample i (optionally clipped to [-c, c], DDPO)
    rho_ik   = exp(lp_theta(step k of i) - lp_old(step k of i))
    lp       = per-pixel mean of log N(x_{k+1}; mu_theta(x_k, t_k, c), sigma_k^2 I)
    KL_ik    = ||mu_theta - mu_ref||^2 / (2 sigma_k^2), per-pixel mean (closed form)
    loss     = aggregate over steps (GRPOConfig.loss_type) of
               -min(rho A, clip(rho) A) + beta KL

The old log-probs: with ``num_iterations == 1`` they are the current ones
under ``stop_gradient`` (the first ratio is exactly 1, and one forward pass
is saved); with more iterations they are scored once before the updates.

REINFORCE (DDPO's ``DDPO_SF``, the score-function estimator) uses the same
batch with normalised rewards as advantages and ``-mean_i(sum_k lp_ik A_i)``;
PPO (DDPO's ``DDPO_IS``) the clipped surrogate over ``update_epochs`` x
``num_minibatches`` updates of the stored chains, with DDPO's per-condition
reward statistics as advantages (:func:`per_condition_advantages`), no value
network.

Everything here runs inside the compiled step; the reward function must be
written in ``jnp`` (image rewards are).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from artifex_rl.batches import check_shape, require
from artifex_rl.distributions.chain import TrajectoryPolicy
from artifex_rl.rewards import call_reward
from artifex_rl.rl.generation import HOST_ONLY_ERRORS, repeat_groups

Array = jax.Array


def is_trajectory_policy(head: Any) -> bool:
    """Whether ``head`` is a policy over sampling chains (see :class:`TrajectoryPolicy`)."""
    return isinstance(head, TrajectoryPolicy)


def _score_samples(reward_fn: Any, samples: Array, conditions: Any, who: str) -> Array:
    try:
        rewards = call_reward(reward_fn, samples, conditions)
    except HOST_ONLY_ERRORS as err:
        raise TypeError(
            f"{who}: the reward function {reward_fn!r} needs concrete values, but a sampling chain is rolled "
            f"out and rewarded inside the compiled step; write it with jax.numpy (images (B, H, W, C), "
            f"conditions (B,)) -> (B,) ({type(err).__name__})"
        ) from err
    return jnp.asarray(rewards, jnp.float32)


def online_group_size(batch: dict[str, Any], reward_fn: Any, who: str) -> int:
    """``batch['group_size']`` (default 1), checked; a batch to roll out online needs ``reward_fn``."""
    if "rewards" not in batch and reward_fn is None:
        raise ValueError(f"{who}: a chain policy trained online needs reward_fn=... (the batch has no 'rewards')")
    group_size = batch.get("group_size", 1)
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise TypeError(f"{who}: batch['group_size'] must be a Python int >= 1, got {group_size!r}")
    return group_size


def prepare_trajectory_batch(
    policy: TrajectoryPolicy,
    model: Any,
    batch: dict[str, Any],
    rng: Array,
    *,
    reward_fn: Any,
    group_size: int,
    advantage_fn: Callable[[Array], tuple[Array, dict[str, Array]]],
    advantage_clip: float | None,
    score_old: bool,
    reference: Any | None,
    who: str,
) -> dict[str, Any]:
    """The prepared GRPO batch of chains (online when ``batch`` has no ``rewards``).

    Online ``batch``: ``observations (num_prompts,)`` (labels of a conditional
    model; anything for an unconditional one), optional ``conditions``
    (what the reward reads, default the observations) and ``sample_key``.
    Offline ``batch``: ``observations (B,)``, ``actions`` = stored chains
    ``(B, S + 1, ...)`` and ``rewards (B,)``.

    ``advantage_fn(rewards (B,)) -> (advantages (B,), metrics)``: GRPO's
    group-relative advantages, or REINFORCE's normalised returns.

    Returns:
      ``observations (B,)``, ``actions (B, S + 1, ...)``, ``steps (B, K)``,
      ``completion_mask (B, K)``, ``advantages (B,)``, optionally
      ``old_log_probs (B, K)`` and ``ref_means (B, K, ...)``, plus ``metrics``
      and ``outputs`` (``samples``, ``rewards``).
    """
    k_steps = jax.random.fold_in(rng, 1)
    outputs: dict[str, Array] = {}
    if "rewards" not in batch:
        require(batch, ["observations"], who)
        prompts = jnp.asarray(batch["observations"])
        observations = repeat_groups(prompts, group_size)
        conditions = repeat_groups(batch.get("conditions", prompts), group_size)
        trajectory = policy.rollout(model, observations, batch.get("sample_key", rng))
        rewards = _score_samples(reward_fn, trajectory.samples, conditions, who)
        states = trajectory.states
        outputs = {"samples": trajectory.samples, "rewards": rewards}
    else:
        require(batch, ["observations", "actions", "rewards"], who)
        observations, states = jnp.asarray(batch["observations"]), jnp.asarray(batch["actions"])
        rewards = jnp.asarray(batch["rewards"], jnp.float32)
        check_shape("rewards", rewards, (rewards.shape[0],), who)
        b = rewards.shape[0]
        check_shape("observations", observations, (b,), who)
        if states.ndim < 3 or states.shape[0] != b:
            raise ValueError(
                f"{who}: batch['actions'] holds the stored chains, expected shape ({b}, S + 1, H, W, C); "
                f"got {states.shape}"
            )
    b = rewards.shape[0]
    if b % group_size:
        raise ValueError(
            f"{who}: {b} chains do not split into groups of group_size={group_size} consecutive samples"
        )
    advantages, metrics = advantage_fn(rewards)
    if advantage_clip is not None:
        advantages = jnp.clip(advantages, -advantage_clip, advantage_clip)
    steps = policy.training_steps(k_steps, b)
    prepared: dict[str, Any] = {
        "observations": observations,
        "actions": states,
        "steps": steps,
        "completion_mask": jnp.ones(steps.shape, jnp.float32),
        "advantages": advantages,
    }
    if score_old:
        prepared["old_log_probs"] = jax.lax.stop_gradient(policy.score(model, observations, states, steps).log_probs)
    if reference is not None:
        prepared["ref_means"] = jax.lax.stop_gradient(policy.score(reference, observations, states, steps).means)
    finite = jnp.isfinite(rewards)
    prepared["metrics"] = {
        "mean_reward": jnp.sum(jnp.where(finite, rewards, 0.0)) / jnp.maximum(jnp.sum(finite), 1),
        **metrics,
    }
    prepared["outputs"] = outputs
    return prepared


def per_condition_advantages(rewards: Array, conditions: Array, eps: float = 1e-4) -> tuple[Array, dict[str, Array]]:
    """DDPO's per-prompt reward statistics, over the batch: ``(r - mean_c) / (std_c + eps)``.

    ``mean_c``/``std_c`` are over the batch's samples with the same condition
    (DDPO's ``PerPromptStatTracker`` without its history buffer); with one
    condition this is the batch-normalised reward. Non-finite rewards get 0
    and are left out of the statistics.

    Args:
      rewards: ``(B,)``; conditions: ``(B,)`` (any values that compare with ``==``).
    """
    finite = jnp.isfinite(rewards)
    r = jnp.where(finite, rewards, 0.0)
    cond = jnp.asarray(conditions).reshape(rewards.shape[0], -1)
    same = jnp.all(cond[:, None, :] == cond[None, :, :], axis=-1) & finite[None, :]
    count = jnp.maximum(jnp.sum(same, axis=1), 1)
    mean = jnp.sum(jnp.where(same, r[None, :], 0.0), axis=1) / count
    var = jnp.sum(jnp.where(same, jnp.square(r[None, :] - mean[:, None]), 0.0), axis=1) / count
    advantages = jnp.where(finite, (r - mean) / (jnp.sqrt(var) + eps), 0.0)
    return advantages, {"reward_std": jnp.mean(jnp.sqrt(var)), "nonfinite_reward_frac": 1.0 - jnp.mean(finite)}


def trajectory_scores(policy: TrajectoryPolicy, model: Any, batch: dict[str, Any]) -> tuple[Array, Array, Array, Array | None]:
    """``(log_probs (B, K), old_log_probs (B, K), entropy (B, K), kl (B, K) | None)`` of a prepared batch."""
    scores = policy.score(model, batch["observations"], batch["actions"], batch["steps"])
    old = batch.get("old_log_probs")
    if old is None:  # num_iterations == 1: the data are on-policy, the ratio is exactly 1
        old = jax.lax.stop_gradient(scores.log_probs)
    kl = policy.kl(scores, batch["ref_means"]) if "ref_means" in batch else None
    return scores.log_probs, old, policy.entropy(scores), kl


__all__ = ["is_trajectory_policy", "online_group_size", "per_condition_advantages", "prepare_trajectory_batch", "trajectory_scores"]
