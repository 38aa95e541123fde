"""REINFORCE: the plain policy gradient with normalised returns and an entropy bonus.

Loss, on the batch's ``N`` valid steps (the seeds' formula)::

    G_t  = sum_{k>=t} gamma^(k-t) r_k      (reset at episode ends: dones)
    Ĝ_t  = (G_t - mean(G)) / (std(G) + 1e-8)        if normalize_returns
    loss = -mean_t[ log pi(a_t | s_t) * Ĝ_t ] - entropy_coeff * mean_t H(pi(. | s_t))

Batch layouts (``observations`` may also be called ``states``):

* steps: ``rewards (T,)`` is one time-ordered trajectory that may hold several
  episodes separated by ``dones``; ``(B, T)`` is B trajectories. With
  ``observations (..., *obs)``, ``actions (...)`` or ``(..., D)`` and optional
  ``dones`` and ``mask`` (1 = real step, 0 = padding) of the rewards' shape.
  A batch of independent one-step samples (the seeds' GAN example) is a
  ``(B,)`` trajectory with ``dones = 1`` everywhere.
* sequences (``policy="tokens"``): ``observations (B, P)`` prompt tokens,
  ``actions (B, N)`` completion tokens, ``completion_mask (B, N)`` and
  ``rewards (B,)``; each sequence is one episode whose log-probability is the
  sum over its completion tokens.
* sampling chains (``policy=`` a :class:`~artifex_rl.distributions.chain.TrajectoryPolicy`,
  e.g. a diffusion sampler; DDPO's score-function estimator): online, a batch
  of prompts ``observations (B,)`` is rolled out with ``reward_fn`` (see
  :mod:`artifex_rl.rl.trajectories`); each chain is one episode whose
  log-probability is the sum over its trained steps, ``Ĝ`` the batch-normalised
  reward. ``group_size`` in the batch rolls out that many chains per prompt.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from artifex_rl.batches import canonical, check_leading, check_shape, flatten_leading, require
from artifex_rl.core.loss_terms import LossTerm
from artifex_rl.distributions import score_sequences
from artifex_rl.rl.base import RLTrainer
from artifex_rl.rl.configs import REINFORCEConfig
from artifex_rl.rl.losses import compute_discounted_returns, masked_mean, masked_sum, normalize_advantages
from artifex_rl.rl.trajectories import (
    is_trajectory_policy,
    online_group_size,
    prepare_trajectory_batch,
    trajectory_scores,
)


class REINFORCETrainer(RLTrainer):
    """REINFORCE policy-gradient trainer (see the module docstring for the loss).

    Metrics: ``loss``, ``policy_loss``, ``entropy``, ``mean_reward`` and
    ``reward_std`` (over the batch's valid rewards), ``mean_return`` (discounted,
    before normalisation), ``unfinished_frac`` (with ``dones``: the fraction of
    steps left out because their episode does not end in the batch), and
    ``grad_norm`` (see TrainerConfig).
    """

    config_class = REINFORCEConfig
    config: REINFORCEConfig

    def index_keys(self, batch):
        if is_trajectory_policy(self.policy):
            return []
        if self.is_token_policy:
            return [("observations", None, "token"), ("actions", "completion_mask", "token")]
        return [("actions", "mask", "action")]

    def compute_returns(self, rewards: jax.Array, dones: jax.Array | None = None) -> jax.Array:
        """Discounted returns ``G_t = r_t + gamma * (1 - done_t) * G_{t+1}`` with ``config.gamma``.

        The seeds' ``REINFORCETrainer.compute_returns``; :meth:`prepare_batch`
        computes the batch's returns through it, so a subclass may override it.

        Args:
          rewards: ``(T,)`` one time-ordered trajectory or ``(B, T)``, time last.
          dones: optional, the shape of ``rewards``; 1 where an episode ends
            (no return flows back across it). ``None``: each row is one episode.

        Returns:
          ``(T,)`` / ``(B, T)`` float32 returns
          (:func:`~artifex_rl.rl.losses.returns.compute_discounted_returns`).
        """
        return compute_discounted_returns(rewards, self.config.gamma, dones)

    def normalize_returns(self, returns: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Standardise returns: ``(G - mean(G)) / (std(G) + 1e-8)`` over the valid entries.

        The seeds' ``REINFORCETrainer.normalize_returns`` (variance reduction:
        the batch mean acts as a baseline). It always normalises;
        :meth:`prepare_batch` calls it only when ``config.normalize_returns``.

        Args:
          returns: any shape, e.g. ``(T,)`` or ``(B, T)``.
          mask: optional, the shape of ``returns``; non-zero = valid. The
            statistics use the valid entries only; masked entries come out 0.

        Returns:
          Normalised returns, the shape of ``returns``
          (:func:`~artifex_rl.rl.losses.aggregation.normalize_advantages`).
        """
        return normalize_advantages(returns, mask)

    def prepare_batch(self, model, batch, rng, frozen) -> dict[str, Any]:
        batch = canonical(batch)
        who = type(self).__name__
        if is_trajectory_policy(self.policy):
            return self._prepare_trajectories(model, batch, rng, who)
        require(batch, ["observations", "actions", "rewards"], who)
        rewards = jnp.asarray(batch["rewards"], jnp.float32)
        if self.is_token_policy:
            return self._prepare_sequences(batch, rewards, who)

        mask = batch.get("mask")
        lead = rewards.shape
        if rewards.ndim not in (1, 2):
            raise ValueError(f"{who}: batch['rewards'] has shape {lead}, expected (T,) or (B, T)")
        for key in ("observations", "actions"):
            check_leading(key, batch[key], lead, who)
        for key in ("dones", "mask"):
            if key in batch:
                check_shape(key, batch[key], lead, who)
        if mask is not None:  # padding may hold anything, NaN included
            rewards = jnp.where(jnp.asarray(mask) > 0, rewards, 0.0)
        returns = self.compute_returns(rewards, batch.get("dones"))
        pad_mask = mask
        observations, actions = batch["observations"], batch["actions"]
        if mask is not None:  # NaN in padded observations/actions must not reach the gradient
            observations, actions = _zero_padding(observations, mask), _zero_padding(actions, mask)
        extra_metrics = {}
        if self.config.mask_unfinished_episodes and "dones" in batch:
            finished = _finished_in_window(jnp.asarray(batch["dones"]))
            valid = jnp.ones(lead, jnp.float32) if mask is None else (jnp.asarray(mask) > 0).astype(jnp.float32)
            extra_metrics["unfinished_frac"] = 1.0 - jnp.sum(finished * valid) / jnp.maximum(jnp.sum(valid), 1.0)
            mask = valid * finished
        mean_return = masked_mean(returns, mask)
        if self.config.normalize_returns:
            returns = self.normalize_returns(returns, mask)
        n = rewards.ndim
        prepared = {
            "observations": flatten_leading(observations, n),
            "actions": flatten_leading(actions, n),
            "returns": flatten_leading(returns, n),
            "metrics": {
                "mean_reward": masked_mean(rewards, pad_mask),
                "reward_std": jnp.sqrt(masked_mean(jnp.square(rewards - masked_mean(rewards, pad_mask)), pad_mask)),
                "mean_return": mean_return,
                **extra_metrics,
            },
        }
        if mask is not None:  # masked means only where there is padding
            prepared["mask"] = flatten_leading(jnp.asarray(mask, jnp.float32), n)
        return prepared

    def _prepare_trajectories(self, model, batch, rng, who) -> dict[str, Any]:
        group_size = online_group_size(batch, self.reward_fn, who)

        def advantages(rewards):
            finite = jnp.isfinite(rewards)
            returns = self.normalize_returns(rewards, finite) if self.config.normalize_returns else rewards
            return jnp.where(finite, returns, 0.0), {"reward_std": jnp.std(jnp.where(finite, rewards, 0.0))}

        return prepare_trajectory_batch(
            self.policy, model, batch, rng, reward_fn=self.reward_fn, group_size=group_size,
            advantage_fn=advantages, advantage_clip=None, score_old=False, reference=None, who=who,
        )

    def _prepare_sequences(self, batch, rewards, who) -> dict[str, Any]:
        prompts, completions = batch["observations"], batch["actions"]
        b = rewards.shape[0]
        check_shape("rewards", rewards, (b,), who)
        check_shape("observations", prompts, (b, None), who)
        check_shape("actions", completions, (b, None), who)
        mask = batch.get("completion_mask", jnp.ones(completions.shape, jnp.float32))
        check_shape("completion_mask", mask, completions.shape, who)
        returns = self.normalize_returns(rewards) if self.config.normalize_returns else rewards
        return {
            "observations": prompts,
            "actions": completions,
            "completion_mask": jnp.asarray(mask, jnp.float32),
            "returns": returns,
            "metrics": {"mean_reward": jnp.mean(rewards), "reward_std": jnp.std(rewards)},
        }

    def compute_loss(self, model, batch, rng):
        if is_trajectory_policy(self.policy):  # a chain's log-probability: the sum over its trained steps
            log_probs, _, entropy, _ = trajectory_scores(self.policy, model, batch)
            policy_loss = -jnp.mean(jnp.sum(log_probs, axis=-1) * jax.lax.stop_gradient(batch["advantages"]))
            entropy = jnp.mean(entropy)
            return policy_loss - self.config.entropy_coeff * entropy, {"policy_loss": policy_loss, "entropy": entropy}
        returns = jax.lax.stop_gradient(batch["returns"])
        if self.is_token_policy:
            mask = batch["completion_mask"]
            token_logp, token_entropy = score_sequences(model, batch["observations"], batch["actions"])
            log_prob = masked_sum(token_logp, mask, axis=-1)
            policy_loss = -jnp.mean(log_prob * returns)
            entropy = masked_mean(token_entropy, mask)
            extra = {}
        else:
            mask = batch.get("mask")
            output = model(batch["observations"])
            head = self.resolve_policy(batch["actions"], output=output)
            self.check_output_fits(head, output)
            log_prob = head.log_prob(output, batch["actions"])
            policy_loss = -masked_mean(log_prob * returns, mask)
            entropy = masked_mean(head.entropy(output), mask)
            extra = self.action_metrics(head, output, batch["actions"], mask)
        loss = policy_loss - self.config.entropy_coeff * entropy
        if mask is not None and not self.is_token_policy:
            # Every term is a mean over the valid steps: as (sum, count) the loss
            # stays exact under gradient accumulation when micro-batches hold
            # different numbers of valid steps.
            count = jnp.sum(jnp.asarray(mask) > 0).astype(jnp.float32)
            loss = LossTerm(loss * jnp.maximum(count, 1.0), count)
        return loss, {"policy_loss": policy_loss, "entropy": entropy, **extra}


def _finished_in_window(dones: jax.Array) -> jax.Array:
    """1.0 where the step's episode ends inside the window (a ``done`` at this step or later), else 0.

    ``dones``: ``(T,)`` or ``(B, T)``, time on the last axis.
    """
    done = (dones > 0).astype(jnp.float32)
    # reverse cumulative max along time: is there a done at or after t?
    return jnp.flip(jax.lax.cummax(jnp.flip(done, -1), axis=done.ndim - 1), -1)


def _zero_padding(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``x (*lead, ...)`` with the entries where ``mask (*lead)`` is 0 replaced by 0 (select, not multiply)."""
    x = jnp.asarray(x)
    if mask is None:
        return x
    keep = jnp.asarray(mask) > 0
    return jnp.where(keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim)), x, jnp.zeros((), x.dtype))
