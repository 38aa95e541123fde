"""PPO: clipped surrogate, clipped value loss and entropy bonus, with GAE.

One ``train_step`` is one PPO iteration, compiled as a single call:

1. ``prepare_batch`` computes GAE advantages and returns for the whole
   rollout (``lax.scan`` over time) and flattens it into samples;
2. ``update_epochs`` x ``num_minibatches`` gradient updates run in a
   ``lax.scan`` (shuffled each epoch), optionally stopped early once a
   minibatch's approximate KL exceeds ``target_kl``.

Per minibatch, with ``r = exp(log pi(a|s) - log pi_old(a|s))`` and
advantages standardised within the minibatch::

    policy_loss = -mean[min(r A, clip(r, 1 - eps, 1 + eps) A)]
    value_loss  = 0.5 mean[max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)]
                  (0.5 mean[(V - R)^2] with clip_value_loss=False)
    loss        = policy_loss + vf_coeff value_loss - entropy_coeff mean[H]

Batch (``observations`` may be called ``states``): ``rewards (T,)`` or
``(B, T)``, and with the same leading shape ``observations``, ``actions``,
``log_probs`` (old policy), ``dones`` and ``values``. ``values`` has ``T + 1``
entries along time (the last is the bootstrap ``V(s_T)``) or ``T`` with an
optional ``last_value`` ``()``/``(B,)``; without either the value after the
last step is taken as 0, as if the data ended in a terminal state (true for
the seeds' one-step examples; pass ``last_value`` for truncated rollouts).
``bootstrap_values`` (optional, rewards' shape) carries ``V`` of the true final
observation at steps cut by a time limit: it is added as ``gamma * V`` to the
reward so that truncation bootstraps instead of looking terminal. ``mask``
(optional) marks padding with 0.

The model returns ``(policy_output, value)``: logits ``(N, A)`` or
``(mean, log_std)``, and values ``(N,)``.

With ``policy=`` a :class:`~artifex_rl.distributions.chain.TrajectoryPolicy`
(a diffusion or flow sampler, DDPO's importance-sampling variant) the model is
the denoiser and there is no value network: online, ``reward_fn`` rewards
chains rolled out from prompts ``observations (B,)`` (``group_size`` chains
each), the advantages are DDPO's per-condition reward statistics, and the
updates run the clipped surrogate over each chain's trained steps (see
:mod:`artifex_rl.rl.trajectories`).

With ``policy="tokens"`` it is PPO on token sequences, the RLHF loop
(InstructGPT, TRL): a causal LM with a value head, KL-shaped per-token
rewards, GAE over completion tokens, batch-whitened advantages, and online
generation ``train_step(prompts, reward_fn, key)`` as GRPO does it; see
:mod:`artifex_rl.rl.ppo_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl.batches import canonical, check_leading, check_shape, flatten_leading, require
from artifex_rl.core.loss_terms import LossTerm
from artifex_rl.distributions import PolicyHead
from artifex_rl.events import Callback
from artifex_rl.rl.base import RLTrainer
from artifex_rl.rl.configs import PPOConfig
from artifex_rl.rl.generation import SampleFn
from artifex_rl.rl.losses import (
    clipped_surrogate_metrics,
    clipped_surrogate_per_element,
    compute_clipped_surrogate_loss,
    compute_gae_advantages,
    masked_mean,
    normalize_advantages,
)
from artifex_rl.rl.online import OnlineGeneration
from artifex_rl.rl.ppo_tokens import prepare_token_batch, split_value_output, token_loss
from artifex_rl.rl.reinforce import _zero_padding
from artifex_rl.rl.trajectories import (
    is_trajectory_policy,
    online_group_size,
    per_condition_advantages,
    prepare_trajectory_batch,
    trajectory_scores,
)


def _split_model_output(output: Any, who: str) -> tuple[Any, jax.Array]:
    if not (isinstance(output, (tuple, list)) and len(output) == 2):
        got = f"an array of shape {jnp.shape(output)}" if not isinstance(output, (tuple, list)) else (
            f"a {type(output).__name__} of {len(output)}")
        raise TypeError(
            f"{who} needs an actor-critic model returning (policy_output, value) with value (N,) or (N, 1); "
            f"got {got} (a policy-only model: use REINFORCETrainer or add a value head)"
        )
    policy_output, value = output
    n = jnp.shape(value)[:1]
    if jnp.ndim(value) > 2 or (jnp.ndim(value) == 2 and jnp.shape(value)[1] != 1):
        raise TypeError(
            f"{who} needs an actor-critic model returning (policy_output, value) with value (N,) or (N, 1); "
            f"the second output has shape {jnp.shape(value)}: is this a Gaussian policy's (mean, log_std) "
            "without a value head?"
        )
    return policy_output, jnp.reshape(value, n)


def _masked_var(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    return masked_mean(jnp.square(x - masked_mean(x, mask)), mask)


class PPOTrainer(OnlineGeneration, RLTrainer):
    """Proximal Policy Optimization (see the module docstring for the batch and loss).

    Args:
      model, optimizer, config, callbacks, policy, mesh: as for :class:`RLTrainer`.
      reward_fn: rewards samples generated online (a chain policy's images;
        token completions with ``policy="tokens"``).
      reference_model: tokens only: ``"copy"`` (default): a frozen copy of the
        policy as it is now, used for the KL-shaped reward when ``kl_coeff >
        0``; a module to use instead; ``None``: none (``ref_log_probs`` must
        then come with the batch).
      sample_fn: tokens only: how completions are sampled online (default: the
        KV-cache :class:`~artifex_rl.models.sampling.TokenSampler` with the
        config's ``max_new_tokens``/``temperature``/``eos_id``/``pad_id``).

    Metrics: ``loss``, ``policy_loss``, ``value_loss``, ``entropy``,
    ``kl_divergence`` (= ``approx_kl``, KL(old || new)), ``clip_fraction``,
    ``mean_reward``, ``advantage_mean``, ``explained_variance``, ``grad_norm``,
    averaged over the iteration's updates; with tokens also ``kl`` (KL(old ||
    ref) per sequence), ``non_score_reward`` and ``completion_length``.
    """

    config_class = PPOConfig
    config: PPOConfig
    expects_value_output = True

    def __init__(
        self,
        model: nnx.Module,
        optimizer: nnx.Optimizer | optax.GradientTransformation,
        config: PPOConfig | None = None,
        *,
        reward_fn: Callable[..., jax.Array] | None = None,
        reference_model: nnx.Module | str | None = "copy",
        sample_fn: SampleFn | None = None,
        policy: str | PolicyHead | None = None,
        callbacks: Sequence[Callback] = (),
        mesh: jax.sharding.Mesh | None = None,
    ):
        super().__init__(model, optimizer, config, policy=policy, reward_fn=reward_fn, callbacks=callbacks, mesh=mesh)
        self.init_online(sample_fn)
        if self.uses_online_generation():
            _check_value_head(model, type(self).__name__)
            if reference_model == "copy":
                if self.config.kl_coeff > 0:
                    self.set_reference_model(None)
            elif reference_model is not None:
                self.set_reference_model(reference_model)

    def uses_online_generation(self) -> bool:
        """Token sequences (``policy="tokens"``) are sampled online; other policies are not."""
        return self.policy is not None and self.is_tokens(self.policy)

    def online_group_size(self, batch) -> int:
        group_size = batch.get("group_size", 1)
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
            raise TypeError(f"{type(self).__name__}: batch['group_size'] must be a Python int >= 1, got {group_size!r}")
        return group_size

    def index_keys(self, batch):
        if is_trajectory_policy(self.policy):
            return []
        if self.uses_online_generation():
            return [("observations", "prompt_mask", "token"), ("actions", "completion_mask", "token")]
        return [("actions", "mask", "action")]

    def update_schedule(self) -> tuple[int, int]:
        return self.config.update_epochs, self.config.num_minibatches

    def continue_updates(self, metrics):
        if self.config.target_kl is None:
            return None
        return metrics["approx_kl"] <= self.config.target_kl

    def prepare_batch(self, model, batch, rng, frozen) -> dict[str, Any]:
        batch = canonical(batch)
        who = type(self).__name__
        if self.uses_online_generation():
            return prepare_token_batch(self, model, batch, rng, frozen)
        if is_trajectory_policy(self.policy):
            group_size = online_group_size(batch, self.reward_fn, who)
            prompts = jnp.asarray(batch["observations"])
            conditions = jnp.repeat(prompts, group_size, axis=0) if "rewards" not in batch else prompts
            return prepare_trajectory_batch(
                self.policy, model, batch, rng, reward_fn=self.reward_fn, group_size=group_size,
                advantage_fn=lambda r: per_condition_advantages(r, conditions), advantage_clip=None,
                score_old=True, reference=None, who=who,
            )
        require(batch, ["observations", "actions", "rewards", "values", "log_probs"], who)
        cfg = self.config
        rewards = jnp.asarray(batch["rewards"], jnp.float32)
        if rewards.ndim not in (1, 2):
            raise ValueError(f"{who}: batch['rewards'] has shape {rewards.shape}, expected (T,) or (B, T)")
        lead = rewards.shape
        for key in ("observations", "actions"):
            check_leading(key, batch[key], lead, who)
        for key in ("log_probs", "dones", "mask", "bootstrap_values"):
            if key in batch:
                check_shape(key, batch[key], lead, who)
        values = jnp.asarray(batch["values"], jnp.float32)
        if values.shape not in (lead, lead[:-1] + (lead[-1] + 1,)):
            raise ValueError(
                f"{who}: batch['values'] has shape {values.shape}, expected {lead} (with an optional "
                f"last_value) or {lead[:-1] + (lead[-1] + 1,)} (with the bootstrap value last)"
            )
        mask = batch.get("mask")
        log_probs = jnp.asarray(batch["log_probs"], jnp.float32)
        bootstrap = jnp.asarray(batch.get("bootstrap_values", jnp.zeros(lead)), jnp.float32)
        if mask is not None:
            # Padding may hold anything, NaN included: zero it before it meets
            # a product (0 * NaN) or an exp in the gradient.
            real = jnp.asarray(mask) > 0
            rewards, log_probs, bootstrap = (jnp.where(real, x, 0.0) for x in (rewards, log_probs, bootstrap))
            values = values.at[..., : lead[-1]].set(jnp.where(real, values[..., : lead[-1]], 0.0))
        gae_rewards = rewards + cfg.gamma * bootstrap
        advantages = compute_gae_advantages(
            gae_rewards, values, batch.get("dones"), cfg.gamma, cfg.gae_lambda, batch.get("last_value")
        )
        old_values = values[..., : lead[-1]]
        returns = advantages + old_values
        # Var(returns - values) / Var(returns), and returns - values = advantages.
        residual_var = _masked_var(advantages, mask)
        returns_var = _masked_var(returns, mask)
        n = rewards.ndim
        prepared = {
            # NaN in padded observations/actions must not reach the gradient: select, don't multiply
            "observations": flatten_leading(_zero_padding(batch["observations"], mask), n),
            "actions": flatten_leading(_zero_padding(batch["actions"], mask), n),
            "old_log_probs": flatten_leading(log_probs, n),
            "old_values": flatten_leading(old_values, n),
            "advantages": flatten_leading(advantages, n),
            "returns": flatten_leading(returns, n),
            "metrics": {
                "mean_reward": masked_mean(rewards, mask),
                "advantage_mean": masked_mean(advantages, mask),
                "explained_variance": 1.0 - residual_var / (returns_var + 1e-8),
            },
        }
        if mask is not None:
            # Only when there is padding: masked means cost several extra ops
            # each, and XLA:CPU's per-op cost dominates a small model's update.
            prepared["mask"] = flatten_leading(jnp.asarray(mask, jnp.float32), n)
        return prepared

    def compute_loss(self, model, batch, rng):
        cfg = self.config
        if self.uses_online_generation():
            return token_loss(self, model, batch)
        if is_trajectory_policy(self.policy):  # DDPO_IS: clipped surrogate over the chains' steps, no critic
            log_probs, old, entropy, _ = trajectory_scores(self.policy, model, batch)
            advantages = jax.lax.stop_gradient(batch["advantages"])
            policy_loss = jnp.mean(clipped_surrogate_per_element(log_probs, old, advantages, cfg.clip_param))
            return policy_loss - cfg.entropy_coeff * jnp.mean(entropy), {
                "policy_loss": policy_loss, "entropy": jnp.mean(entropy),
                **clipped_surrogate_metrics(log_probs, old, cfg.clip_param),
            }
        mask = batch.get("mask")
        policy_output, value = _split_model_output(model(batch["observations"]), type(self).__name__)
        head = self.resolve_policy(batch["actions"], output=policy_output)
        self.check_output_fits(head, policy_output)
        log_prob = head.log_prob(policy_output, batch["actions"])
        entropy = masked_mean(head.entropy(policy_output), mask)

        advantages = batch["advantages"]
        if cfg.normalize_advantages:
            advantages = normalize_advantages(advantages, mask)
        policy_loss, surrogate = compute_clipped_surrogate_loss(
            log_prob, batch["old_log_probs"], advantages, cfg.clip_param, mask, return_metrics=True
        )

        returns, old_values = batch["returns"], batch["old_values"]
        value_loss = jnp.square(value - returns)
        if cfg.clip_value_loss:
            clipped = old_values + jnp.clip(value - old_values, -cfg.clip_param, cfg.clip_param)
            value_loss = jnp.maximum(value_loss, jnp.square(clipped - returns))
        value_loss = 0.5 * masked_mean(value_loss, mask)

        loss = policy_loss + cfg.vf_coeff * value_loss - cfg.entropy_coeff * entropy
        if mask is not None:
            # Every term is a mean over the valid steps: as (sum, count) the loss
            # stays exact under gradient accumulation when micro-batches hold
            # different numbers of valid steps.
            count = jnp.sum(jnp.asarray(mask) > 0).astype(jnp.float32)
            loss = LossTerm(loss * jnp.maximum(count, 1.0), count)
        return loss, {
            "policy_loss": policy_loss,
            "value_loss": value_loss,
            "entropy": entropy,
            "approx_kl": surrogate["approx_kl"],
            "kl_divergence": surrogate["approx_kl"],
            "clip_fraction": surrogate["clip_fraction"],
            **self.action_metrics(head, policy_output, batch["actions"], mask),
        }


def _check_value_head(model: nnx.Module, who: str) -> None:
    """A token policy must return ``(logits, values)``: checked once on a ``(1, 1)`` probe, shapes only."""
    graphdef, state = nnx.split(model)
    try:
        out = jax.eval_shape(lambda s, t: nnx.merge(graphdef, s)(t), state, jax.ShapeDtypeStruct((1, 1), np.int32))
    except Exception:  # noqa: BLE001 - a model that rejects the probe is reported by the first step
        return
    split_value_output(out, who)
