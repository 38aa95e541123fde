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
  ``observations (num_prompts, P)`` and optional ``conditions`` (what the
  reward needs, e.g. targets, leading axis ``num_prompts``). Each prompt is
  repeated ``G`` times, completions are sampled with the current policy,
  scored by ``reward_fn(completions, conditions, completion_mask=...)``, and
  updated on -- all inside one compiled call when ``reward_fn`` is jittable;
  otherwise rewards are computed on the host between a compiled sampling
  call and the compiled update.

The KL penalty uses ``ref_log_probs`` from the batch, else the frozen
reference model (by default a copy of the policy at construction when
``beta > 0``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl.batches import canonical, check_shape, require
from artifex_rl.core.rng import HOST_SAMPLE, stream_key
from artifex_rl.distributions import PolicyHead, score_sequences
from artifex_rl.events import Callback
from artifex_rl.rewards import validate_rewards
from artifex_rl.rl.base import REFERENCE, RLTrainer
from artifex_rl.rl.configs import GRPOConfig
from artifex_rl.rl.losses import (
    aggregate_token_loss,
    clipped_surrogate_metrics,
    clipped_surrogate_per_element,
    compute_group_advantages,
    compute_kl_divergence,
    masked_mean,
    token_loss_term,
)

_log = logging.getLogger(__name__)


Array = jax.Array
#: ``sample_fn(model, prompts (B, P), key) -> object with tokens (B, P+N),
#: completion_mask (B, P+N), log_probs (B, P+N)`` (e.g. GenerationOutput).
SampleFn = Callable[[nnx.Module, Array, Array], Any]

# Errors raised when traced code needs a concrete value: the reward function
# is plain Python/numpy and must run on the host instead.
_HOST_ONLY_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


class GRPOTrainer(RLTrainer):
    """Group Relative Policy Optimization (see the module docstring).

    Args:
      model, optimizer, config, callbacks, policy: as for :class:`RLTrainer`.
      reward_fn: the reward for online training (``fit`` over a prompt
        dataloader); ``train_step(batch, reward_fn, key)`` may also pass one.
      reference_model: ``"copy"`` (default): a frozen copy of the policy as
        it is now, used when ``beta > 0`` and a batch has no
        ``ref_log_probs``; a module to use instead; ``None``: no reference
        model (KL only from ``ref_log_probs`` in the batch).
      sample_fn: how completions are sampled online; default: the
        KV-cache sampler of :mod:`artifex_rl.models.transformer` with the
        config's ``max_new_tokens``/``temperature``/``top_k``/``eos_id``.

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
    ):
        super().__init__(model, optimizer, config, policy=policy, callbacks=callbacks)
        if reference_model == "copy":
            if self.config.beta > 0:
                self.set_reference_model(None)
        elif reference_model is not None:
            self.set_reference_model(reference_model)
        self.reward_fn = reward_fn
        self.sample_fn = sample_fn
        self.reward_on_host = False
        self._host_sampler = None

    # ------------------------------------------------------------ online mode
    def train_step(self, batch, reward_fn: Callable[..., Array] | None = None, key: Array | None = None):
        """One GRPO step. With ``rewards`` in ``batch``: the offline step. Without:
        sample ``G`` completions per prompt with ``reward_fn`` (or the
        constructor's), then update. ``key`` seeds the sampling (default: the
        trainer's RNG stream)."""
        if reward_fn is not None and reward_fn is not self.reward_fn:
            self.reward_fn = reward_fn
            self._recompile()
        if "rewards" in batch:
            return super().train_step(batch)
        if self.reward_fn is None:
            raise ValueError(
                "GRPOTrainer: the batch has no 'rewards' and no reward_fn was given; pass "
                "train_step(batch, reward_fn, key), GRPOTrainer(..., reward_fn=...), or a batch with rewards"
            )
        batch = canonical(batch)
        require(batch, ["observations"], type(self).__name__)
        if key is not None:
            batch["sample_key"] = key
        if self.reward_on_host:
            return self._host_reward_step(batch)
        try:
            return super().train_step(batch)
        except _HOST_ONLY_ERRORS as err:
            _log.warning(
                "reward_fn %r cannot be traced by jax (%s); computing rewards on the host "
                "between compiled sampling and update calls",
                self.reward_fn,
                type(err).__name__,
            )
            self.reward_on_host = True
            self._recompile()
            return self._host_reward_step(batch)

    def _recompile(self) -> None:
        self.recompile()

    def _sampler(self) -> SampleFn:
        if self.sample_fn is not None:
            return self.sample_fn
        from artifex_rl.models.transformer import sample_with_cache

        cfg = self.config
        return functools.partial(
            sample_with_cache,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            eos_id=cfg.eos_id,
            pad_id=cfg.pad_id,
        )

    def _generate(self, model, prompts, conditions, key, group_size):
        """Repeat each prompt ``group_size`` times and sample one completion per copy."""
        prompts = jnp.repeat(prompts, group_size, axis=0)
        conditions = jax.tree.map(lambda c: jnp.repeat(c, group_size, axis=0), conditions)
        out = self._sampler()(model, prompts, key)
        p = prompts.shape[1]
        return prompts, conditions, out.tokens[:, p:], out.completion_mask[:, p:], out.log_probs[:, p:]

    def _host_reward_step(self, batch):
        group_size = int(batch.get("group_size", self.config.num_generations))
        self.resolve_policy(tokens=True)
        if self._host_sampler is None:

            def sample(params, model_state, prompts, conditions, key):
                model = nnx.merge(self.graphdef, params, model_state)
                return self._generate(model, prompts, conditions, key, group_size)

            self._host_sampler = jax.jit(sample)
        key = batch.get("sample_key")
        if key is None:
            # A stream of its own, derived like the step's: (seed key, step).
            key = stream_key(self.train_state["rng"], HOST_SAMPLE, self.global_step)
        prompts, conditions, completions, mask, log_probs = self._host_sampler(
            self.train_state["params"]["model"], self.train_state["model_state"]["model"], batch["observations"],
            batch.get("conditions"), key,
        )
        rewards = self.reward_fn(np.asarray(completions), conditions, completion_mask=np.asarray(mask))
        rewards = validate_rewards(rewards, completions.shape[0], self.reward_fn)
        offline = {
            "observations": prompts,
            "actions": completions,
            "completion_mask": mask,
            "log_probs": log_probs,
            "rewards": rewards,
            "group_size": group_size,
        }
        return super().train_step(offline)

    # ---------------------------------------------------------- the step
    def update_schedule(self) -> tuple[int, int]:
        return self.config.num_iterations, 1

    def prepare_batch(self, model, batch, rng, frozen) -> dict[str, Any]:
        batch = canonical(batch)
        who = type(self).__name__
        group_size = batch.get("group_size", self.config.num_generations)
        if not isinstance(group_size, int):
            raise TypeError(f"{who}: batch['group_size'] must be a Python int, got {type(group_size).__name__}")
        outputs = {}
        self.resolve_policy(batch.get("actions"), tokens="rewards" not in batch)
        if "rewards" not in batch:  # online: sample and score inside this compiled step
            key = batch.get("sample_key", rng)
            prompts, conditions, completions, mask, log_probs = self._generate(
                model, batch["observations"], batch.get("conditions"), key, group_size
            )
            rewards = self.reward_fn(completions, conditions, completion_mask=mask)
            rewards = validate_rewards(rewards, completions.shape[0], self.reward_fn)
            batch = {
                "observations": prompts,
                "actions": completions,
                "completion_mask": mask,
                "log_probs": log_probs,
                "rewards": rewards,
            }
            outputs = {"completions": completions, "completion_mask": mask, "rewards": rewards}

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
        if self.is_token_policy:
            check_shape("observations", obs, (b, None), who)
            check_shape("actions", actions, (b, None), who)
            per_sample = actions.shape
            mask = jnp.asarray(batch.get("completion_mask", jnp.ones(per_sample)), jnp.float32)
            check_shape("completion_mask", mask, per_sample, who)
        else:
            per_sample = (b,)
            mask = jnp.ones((b,), jnp.float32)

        advantages, group_metrics = compute_group_advantages(
            rewards, group_size, self.config.scale_rewards
        )
        old_log_probs = batch.get("log_probs")
        if old_log_probs is None:
            old_log_probs = self._log_probs(model, obs, actions)
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
        if "ref_log_probs" in batch:
            check_shape("ref_log_probs", batch["ref_log_probs"], per_sample, who)
            prepared["ref_log_probs"] = valid_only(batch["ref_log_probs"])
        elif self.config.beta > 0 and REFERENCE in frozen:
            prepared["ref_log_probs"] = valid_only(self._log_probs(frozen[REFERENCE], obs, actions))
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
        if self.is_token_policy:
            metrics["completion_length"] = jnp.mean(jnp.sum(mask, axis=-1))
        prepared["metrics"] = metrics
        prepared["outputs"] = outputs
        return prepared

    def _log_probs(self, model, obs, actions) -> Array:
        if self.is_token_policy:
            return jax.lax.stop_gradient(score_sequences(model, obs, actions)[0])
        return jax.lax.stop_gradient(self.policy.log_prob(model(obs), actions))

    def compute_loss(self, model, batch, rng):
        cfg = self.config
        mask = batch["completion_mask"]
        if self.is_token_policy:
            log_probs, entropy = score_sequences(model, batch["observations"], batch["actions"])
        else:
            output = model(batch["observations"])
            # One "token" per sample, so the token aggregations reduce to a batch mean.
            log_probs = self.policy.log_prob(output, batch["actions"])[:, None]
            entropy = self.policy.entropy(output)[:, None]
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
        }
