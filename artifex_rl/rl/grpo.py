"""GRPO: group-relative advantages, a clipped surrogate and a KL penalty, no critic.

For ``B = num_prompts x G`` completions, consecutive groups of ``G`` share a
prompt. Per completion ``i`` and completion token ``t``::

    A_i     = (r_i - mean_g(r)) / (std_g(r) + eps)       scale_rewards="group"
              (batch std for "batch", no division for "none");
              exactly 0 when every reward of the group is equal
    rho_it  = exp(log pi(o_it) - log pi_old(o_it))
    l_it    = -min(rho_it A_i, clip(rho_it, 1 - eps, 1 + eps_high) A_i)
              + beta * KL_it - entropy_coeff * H_it
    KL_it   = exp(d) - d - 1,  d = log pi_ref(o_it) - log pi(o_it)   (k3)
    loss    = aggregate(l, completion_mask, loss_type)
              "grpo": mean over each sequence's tokens, then over sequences
              "bnpo": mean over all valid tokens
              "dr_grpo": sum over valid tokens / (B x max completion length)

Two ways to feed it:

* **Offline** (the seeds' batch): ``observations`` (prompts ``(B, P)``),
  ``actions`` (completions ``(B, N)``), ``rewards (B,)``, ``log_probs``
  (old policy, per token ``(B, N)``), optional ``completion_mask (B, N)``,
  ``ref_log_probs (B, N)`` and ``group_size``. Missing ``log_probs`` are
  taken from the current policy (on-policy: the first ratio is 1). With
  ``policy="categorical"``/``"gaussian"`` everything is per sample ``(B,)``.
* **Online**: ``train_step(batch, reward_fn, key)`` (or a ``reward_fn`` given
  to the constructor, for ``fit``) where ``batch`` holds prompts
  ``observations (num_prompts, P)``, optional ``prompt_mask (num_prompts, P)``
  and optional ``conditions`` (what the reward needs, e.g. targets, leading
  axis ``num_prompts``). Each prompt is repeated ``G`` times, completions are
  sampled with the current policy by ``sample_fn`` and scored by
  ``reward_fn(completions, conditions, completion_mask=...)``
  (:func:`artifex_rl.rl.generation.sample_and_score`), and updated on -- all
  inside one compiled call when ``reward_fn`` is jittable. Whether it is, is
  decided once per reward function by tracing the reward alone
  (``jax.eval_shape``); if it is not, rewards are computed on the host
  between a compiled sampling call and the compiled update, one step per
  call (``train_steps``/``fit`` with ``steps_per_execution > 1`` included).

**Sampling temperature** (``config.temperature``, TRL's convention): token
policies are scored under ``log_softmax(logits / temperature)`` -- the
trained log-probs, the old ones when the batch has none and the reference's
-- the distribution the sampler draws from, so the update optimises the
policy that generated the data (the first ratio is exactly 1). ``top_k``
truncation is rejected: the update would optimise a distribution the
sampler never draws from.

**A sampler's chain** (``policy=`` a
:class:`~artifex_rl.distributions.chain.TrajectoryPolicy`, e.g.
:class:`~artifex_rl.generative.DenoisingChainPolicy`): prompts are conditions,
completions are denoising chains and "tokens" their steps; the step log-probs
and the closed-form KL come from the policy (DDPO, Flow-GRPO; see
:mod:`artifex_rl.rl.trajectories`).

The KL penalty uses ``ref_log_probs`` from the batch, else the frozen
reference model (by default a copy of the policy at construction when
``beta > 0``).

The online plumbing (the host-reward path, the compiled-program reset on a
new reward) is :class:`artifex_rl.rl.online.OnlineGeneration`, shared with
PPO's token branch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from artifex_rl.batches import canonical, check_leading, check_shape, require
from artifex_rl.distributions import PolicyHead
from artifex_rl.events import Callback
from artifex_rl.rl.base import REFERENCE, RLTrainer
from artifex_rl.rl.configs import GRPOConfig
from artifex_rl.rl.generation import SampleFn, sample_and_score, score_completions
from artifex_rl.rl.losses import (
    aggregate_token_loss,
    clipped_surrogate_metrics,
    clipped_surrogate_per_element,
    compute_group_advantages,
    compute_kl_divergence,
    masked_mean,
    token_loss_term,
)
from artifex_rl.rl.online import OnlineGeneration, online_outputs
from artifex_rl.rl.trajectories import is_trajectory_policy, prepare_trajectory_batch, trajectory_scores

Array = jax.Array


class GRPOTrainer(OnlineGeneration, RLTrainer):
    """Group Relative Policy Optimization (see the module docstring).

    Args:
      model, optimizer, config, callbacks, policy: as for :class:`RLTrainer`.
      reward_fn: the reward for online training (``fit`` over a prompt
        dataloader); ``train_step(batch, reward_fn, key)`` may also pass one.
      reference_model: ``"copy"`` (default): a frozen copy of the policy as
        it is now, used when ``beta > 0`` and a batch has no
        ``ref_log_probs``; a module to use instead; ``None``: no reference
        model (KL only from ``ref_log_probs`` in the batch).
      sample_fn: how completions are sampled online, a
        :class:`~artifex_rl.rl.generation.SampleFn` (its log-probs must be
        under ``logits / config.temperature``). Default: a
        :class:`~artifex_rl.models.sampling.TokenSampler` with the config's
        ``max_new_tokens``/``temperature``/``eos_id``/``pad_id``: the KV cache
        when the model has the public ``DecoderLM`` methods, otherwise the
        cache-free sampler (any causal ``model(tokens) -> logits``).

    Metrics: ``loss``, ``policy_loss``, ``mean_reward``, ``reward_std``,
    ``group_advantage_std``, ``frac_reward_zero_std``, ``kl`` (mean KL to the
    reference), ``kl_penalty`` (``beta * kl``), ``approx_kl`` (old || new),
    ``clip_fraction``, ``entropy``, ``completion_length`` (tokens) (and ``grad_norm``,
    see TrainerConfig).
    """

    config_class = GRPOConfig
    config: GRPOConfig

    def __init__(
        self,
        model: nnx.Module,
        optimizer: nnx.Optimizer | optax.GradientTransformation,
        config: GRPOConfig | None = None,
        *,
        reward_fn: Callable[..., Array] | None = None,
        reference_model: nnx.Module | str | None = "copy",
        sample_fn: SampleFn | None = None,
        policy: str | PolicyHead | None = None,
        callbacks: Sequence[Callback] = (),
        mesh: jax.sharding.Mesh | None = None,
    ):
        super().__init__(model, optimizer, config, policy=policy, reward_fn=reward_fn, callbacks=callbacks, mesh=mesh)
        if reference_model == "copy":
            if self.config.beta > 0:
                self.set_reference_model(None)
        elif reference_model is not None:
            self.set_reference_model(reference_model)
        self.init_online(sample_fn)

    def online_group_size(self, batch) -> int:
        return _group_size(batch, self.config, type(self).__name__)

    # ---------------------------------------------------------- the step
    def check_host_rewards(self, batch) -> None:
        """Non-finite rewards are allowed: their samples are left out of the group statistics."""

    def index_keys(self, batch):
        if is_trajectory_policy(self.policy) or ("rewards" in batch and "actions" not in batch):
            return []
        if self.is_tokens(self.resolve_policy(batch.get("actions"), tokens="rewards" not in batch)):
            return [("observations", "prompt_mask", "token"), ("actions", "completion_mask", "token")]
        return [("actions", None, "action")]

    def update_schedule(self) -> tuple[int, int]:
        return self.config.num_iterations, 1

    def prepare_batch(self, model, batch, rng, frozen) -> dict[str, Any]:
        batch = canonical(batch)
        who = type(self).__name__
        group_size = _group_size(batch, self.config, who)
        outputs = {}
        head = self.resolve_policy(batch.get("actions"), tokens="rewards" not in batch)
        if is_trajectory_policy(head):  # a sampler's chain (diffusion, flow): rl/trajectories.py
            if "rewards" not in batch:
                self._require_reward_fn()
            use_reference = self.config.beta > 0 and REFERENCE in frozen
            if self.config.beta > 0 and not use_reference:
                raise ValueError(f"{who}: beta={self.config.beta} > 0 needs a reference model (reference_model='copy')")
            return prepare_trajectory_batch(
                head, model, batch, rng, reward_fn=self.reward_fn, group_size=group_size,
                advantage_fn=lambda r: compute_group_advantages(r, group_size, self.config.scale_rewards),
                advantage_clip=self.config.advantage_clip,
                score_old=self.config.num_iterations > 1, reference=frozen[REFERENCE] if use_reference else None,
                who=who,
            )
        tokens = self.is_tokens(head)
        if "rewards" not in batch:  # online: sample and score inside this compiled step
            self._require_reward_fn()
            # A reward that needs concrete values raises RewardNotJittableError
            # here (decided by tracing the reward alone); train_step/train_steps
            # then take the host-reward path.
            scored = sample_and_score(
                self.sample_fn, self.reward_fn, model, batch["observations"], batch.get("conditions"),
                batch.get("sample_key", rng), group_size, prompt_mask=batch.get("prompt_mask"),
            )
            batch = scored.as_batch()
            outputs = online_outputs(scored)

        require(batch, ["observations", "actions", "rewards"], who)
        rewards = jnp.asarray(batch["rewards"], jnp.float32)
        b = rewards.shape[0]
        check_shape("rewards", rewards, (b,), who)
        if b % group_size:
            raise ValueError(
                f"{who}: batch['rewards'] has shape {rewards.shape}, but the batch must hold whole "
                f"groups of group_size={group_size} consecutive completions ({b} % {group_size} != 0)"
            )
        obs, actions = batch["observations"], batch["actions"]
        if tokens:
            check_shape("observations", obs, (b, None), who)
            check_shape("actions", actions, (b, None), who)
            per_sample = actions.shape
            mask = jnp.asarray(batch.get("completion_mask", jnp.ones(per_sample)), jnp.float32)
            check_shape("completion_mask", mask, per_sample, who)
        else:
            if jnp.shape(obs)[:1] != (b,):
                # One observation row per completion; the seeds' diffusion example passes one
                # condition per prompt for G samples each.
                raise ValueError(
                    f"{who}: batch['observations'] has shape {jnp.shape(obs)}, expected leading dims ({b},): "
                    f"one row per sample, like batch['rewards'] {rewards.shape}; repeat each prompt or "
                    f"condition for its group (jnp.repeat(conditions, {group_size}, axis=0))"
                )
            check_leading("actions", actions, (b,), who)
            per_sample = (b,)
            mask = jnp.ones((b,), jnp.float32)

        advantages, group_metrics = compute_group_advantages(
            rewards, group_size, self.config.scale_rewards
        )
        if self.config.advantage_clip is not None:
            advantages = jnp.clip(advantages, -self.config.advantage_clip, self.config.advantage_clip)
        prompt_mask = batch.get("prompt_mask")
        if prompt_mask is not None:
            check_shape("prompt_mask", prompt_mask, obs.shape, who)
        old_log_probs = batch.get("log_probs")
        if old_log_probs is None:
            old_log_probs = self._log_probs(model, obs, actions, prompt_mask, head)
        check_shape("log_probs", old_log_probs, per_sample, who)

        real = mask.reshape(per_sample) > 0

        def valid_only(x):
            # Padding after EOS may hold anything (NaN included); zero it so it
            # cannot reach the gradient through exp(log-ratio).
            return jnp.where(real, jnp.asarray(x, jnp.float32), 0.0)

        prepared = {
            "observations": obs,
            "actions": actions,
            "completion_mask": mask,
            "advantages": advantages,
            "old_log_probs": valid_only(old_log_probs),
        }
        if prompt_mask is not None:
            prepared["prompt_mask"] = prompt_mask
        if "ref_log_probs" in batch:
            check_shape("ref_log_probs", batch["ref_log_probs"], per_sample, who)
            prepared["ref_log_probs"] = valid_only(batch["ref_log_probs"])
        elif self.config.beta > 0 and REFERENCE in frozen:
            prepared["ref_log_probs"] = valid_only(
                self._log_probs(frozen[REFERENCE], obs, actions, prompt_mask, head)
            )
        elif self.config.beta > 0:
            raise ValueError(
                f"{who}: beta={self.config.beta} > 0 asks for a KL penalty, but there is no reference: "
                "the batch has no 'ref_log_probs' and the trainer has no reference model "
                "(reference_model=None). Pass reference_model='copy' (the default) or a module, "
                "put 'ref_log_probs' in the batch, or set beta=0"
            )

        metrics = {
            # over the scorable samples: a non-finite reward is left out (advantage 0)
            "mean_reward": jnp.sum(jnp.where(jnp.isfinite(rewards), rewards, 0.0))
            / jnp.maximum(jnp.sum(jnp.isfinite(rewards)), 1),
            **group_metrics,
        }
        if tokens:
            metrics["completion_length"] = jnp.mean(jnp.sum(mask, axis=-1))
        prepared["metrics"] = metrics
        prepared["outputs"] = outputs
        return prepared

    def _score_tokens(self, model, prompts, completions, prompt_mask=None) -> tuple[Array, Array]:
        """Token log-probs and entropies under the sampling distribution ``logits / temperature``
        (C-M6: the distribution the online sampler draws from)."""
        return score_completions(
            model, prompts, completions, temperature=self.config.temperature, prompt_mask=prompt_mask
        )

    def _log_probs(self, model, obs, actions, prompt_mask, head: PolicyHead) -> Array:
        if self.is_tokens(head):
            return jax.lax.stop_gradient(self._score_tokens(model, obs, actions, prompt_mask)[0])
        output = model(obs)
        self.check_output_fits(head, output)
        return jax.lax.stop_gradient(head.log_prob(output, actions))

    def compute_loss(self, model, batch, rng):
        cfg = self.config
        mask = batch["completion_mask"]
        head = self.resolve_policy(batch["actions"])
        kl_per_token, action_metrics = None, {}
        if is_trajectory_policy(head):  # steps of sampling chains, like tokens
            log_probs, old, entropy, kl_per_token = trajectory_scores(head, model, batch)
        elif self.is_tokens(head):
            log_probs, entropy = self._score_tokens(
                model, batch["observations"], batch["actions"], batch.get("prompt_mask")
            )
            old = batch["old_log_probs"].reshape(log_probs.shape)
        else:
            output = model(batch["observations"])
            self.check_output_fits(head, output)
            action_metrics = self.action_metrics(head, output, batch["actions"])
            # One "token" per sample, so the token aggregations reduce to a batch mean.
            log_probs = head.log_prob(output, batch["actions"])[:, None]
            entropy = head.entropy(output)[:, None]
            mask = mask[:, None]
            old = batch["old_log_probs"].reshape(log_probs.shape)
        surrogate = clipped_surrogate_per_element(
            log_probs, old, batch["advantages"], cfg.clip_param, cfg.epsilon_high
        )
        per_token = surrogate - cfg.entropy_coeff * entropy
        kl = jnp.zeros(())
        if "ref_log_probs" in batch:
            kl_per_token = compute_kl_divergence(
                log_probs, batch["ref_log_probs"].reshape(log_probs.shape), cfg.kl_estimator, mask, reduce=False
            )
        if kl_per_token is not None:
            per_token = per_token + cfg.beta * kl_per_token
            kl = masked_mean(kl_per_token, mask)
        # (sum, count) form: "dapo" (and "grpo"/"dr_grpo") stay exact under accumulation.
        loss = token_loss_term(per_token, mask, cfg.loss_type)
        diagnostics = clipped_surrogate_metrics(log_probs, old, cfg.clip_param, mask, cfg.epsilon_high)
        return loss, {
            "policy_loss": aggregate_token_loss(surrogate, mask, cfg.loss_type),
            "entropy": masked_mean(entropy, mask),
            "kl": kl,
            "kl_penalty": cfg.beta * kl,
            **diagnostics,
            **action_metrics,
        }


def _group_size(batch: dict[str, Any], config: GRPOConfig, who: str) -> int:
    group_size = batch.get("group_size", config.num_generations)
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise TypeError(f"{who}: batch['group_size'] must be a Python int >= 1, got {group_size!r}")
    return group_size
