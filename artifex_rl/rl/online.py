"""Online generation for the token trainers: sample from prompts, reward, update in one call.

Shared by :class:`~artifex_rl.rl.GRPOTrainer` and the token branch of
:class:`~artifex_rl.rl.PPOTrainer`. ``train_step(batch, reward_fn, key)`` with
prompts ``observations (num_prompts, P)`` (optional ``prompt_mask`` and
``conditions``) and no ``rewards``: the trainer's ``prepare_batch`` samples
completions with ``sample_fn`` (the KV-cache :class:`~artifex_rl.models.sampling.TokenSampler`
by default) and scores them with ``reward_fn`` inside the compiled step
(:func:`artifex_rl.rl.generation.sample_and_score`). Whether the reward is
jittable is decided once per reward function by tracing the reward alone; a
reward that needs concrete values runs on the host between a compiled
sampling call and the compiled update, one step per call.

A trainer using :class:`OnlineGeneration` provides ``online_group_size(batch)``
(completions per prompt) and may override ``uses_online_generation()``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from artifex_rl.batches import canonical, require
from artifex_rl.core.rng import HOST_SAMPLE, stream_key
from artifex_rl.rewards import RewardFunctionError
from artifex_rl.rl.generation import (
    Completions,
    RewardNotJittableError,
    SampleFn,
    ScoredCompletions,
    sample_groups,
    score_rewards,
)

_log = logging.getLogger(__name__)

Array = jax.Array


class OnlineGeneration:
    """Mixin of an :class:`~artifex_rl.rl.base.RLTrainer` that samples its token batches online.

    Attributes set by :meth:`init_online`: ``sample_fn`` and ``reward_on_host``
    (``None`` until the first online step decides it).
    """

    def init_online(self, sample_fn: SampleFn | None) -> None:
        check_sampling_settings(self.config)
        self.sample_fn: SampleFn = sample_fn if sample_fn is not None else default_sampler(self.config)
        #: Whether ``reward_fn`` runs on the host (``None``: not decided yet).
        self.reward_on_host: bool | None = None

    def uses_online_generation(self) -> bool:
        """Whether batches without ``rewards`` are prompts to sample from (GRPO: always)."""
        return True

    def online_group_size(self, batch: dict[str, Any]) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------ the steps
    def train_step(self, batch, reward_fn: Callable[..., Array] | None = None, key: Array | None = None):
        """One step; without ``rewards`` in ``batch``, sample and score completions first.

        ``reward_fn`` replaces the constructor's (every compiled program is then
        retraced); ``key`` seeds the sampling (default: the trainer's RNG
        stream), with the step number folded in so that the same key every step
        still draws fresh completions.
        """
        if not self.uses_online_generation():
            if reward_fn is not None or key is not None:
                raise TypeError(
                    f"{type(self).__name__}.train_step(batch, reward_fn, key) samples token completions online, "
                    "which needs policy='tokens'"
                )
            return super().train_step(batch)
        with _reward_errors_at(type(self).__name__, self.global_step):
            return self._online_train_step(batch, reward_fn, key)

    def _online_train_step(self, batch, reward_fn, key):
        if reward_fn is not None and reward_fn is not self.reward_fn:
            self._set_reward_fn(reward_fn)
        if "rewards" in batch:
            return super().train_step(batch)
        batch = self._online_batch(batch)
        if key is not None:
            batch["sample_key"] = jax.random.fold_in(key, self.global_step)
        if not self.reward_on_host:
            try:
                metrics = super().train_step(batch)
            except RewardNotJittableError as err:
                self._use_host_rewards(err)
            else:
                self.reward_on_host = False
                return metrics
        return self._host_reward_step(batch)

    def train_steps(self, batches: Sequence[Any]):
        """``len(batches)`` steps in one compiled call, as :meth:`Trainer.train_steps`.

        Online batches with a reward that runs on the host take one step per
        batch instead (sampling must see the latest parameters); the metrics
        are stacked the same way.
        """
        batches = list(batches)
        if not self.uses_online_generation():
            return super().train_steps(batches)
        with _reward_errors_at(type(self).__name__, self.global_step):
            if all("rewards" in b for b in batches):
                return super().train_steps(batches)
            self._require_reward_fn()
            if not self.reward_on_host:
                try:
                    return super().train_steps(batches)
                except RewardNotJittableError as err:
                    self._use_host_rewards(err)
            metrics = [self.train_step(b) for b in batches]
            return jax.tree.map(lambda *xs: jnp.stack(xs), *metrics)

    # ------------------------------------------------------------ plumbing
    def _require_reward_fn(self) -> None:
        if self.reward_fn is None:
            who = type(self).__name__
            raise ValueError(
                f"{who}: the batch has no 'rewards' and no reward_fn was given; pass "
                f"train_step(batch, reward_fn, key), {who}(..., reward_fn=...), or a batch with rewards"
            )

    def _online_batch(self, batch) -> dict[str, Any]:
        self._require_reward_fn()
        batch = canonical(batch)
        require(batch, ["observations"], type(self).__name__)
        return batch

    def _use_host_rewards(self, err: Exception) -> None:
        _log.warning(
            "reward_fn %r cannot be traced by jax; computing rewards on the host between compiled "
            "sampling and update calls (%s)", self.reward_fn, err,
        )
        self.reward_on_host = True

    def _set_reward_fn(self, reward_fn: Callable[..., Array]) -> None:
        """Use ``reward_fn`` from now on: every compiled program traced with the old one is dropped."""
        self.reward_fn = reward_fn
        self.reward_on_host = None
        # The compiled step and runners read self.reward_fn while tracing: drop them all.
        self.recompile()

    def _host_reward_step(self, batch: dict[str, Any]):
        """Compiled sampling, rewards on the host, then the compiled offline update."""
        group_size = self.online_group_size(batch)
        key = batch.get("sample_key")
        if key is None:
            # A stream of its own, derived like the step's: (seed key, step).
            key = stream_key(self.train_state["rng"], HOST_SAMPLE, self.global_step)
        policy = self.policy_snapshot()
        prompts, prompt_mask, completions = _compiled_sample_groups(
            policy.graphdef, self.sample_fn, group_size, policy.params, policy.model_state,
            batch["observations"], batch.get("prompt_mask"), key,
        )
        host = Completions(*jax.device_get(tuple(completions)))
        conditions = jax.tree.map(lambda c: np.repeat(np.asarray(c), group_size, axis=0), batch.get("conditions"))
        rewards = score_rewards(self.reward_fn, host, conditions)
        scored = ScoredCompletions(prompts, prompt_mask, conditions, completions, rewards)
        metrics = super().train_step({**scored.as_batch(), "group_size": group_size})
        self.last_outputs = online_outputs(scored)
        return metrics


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
@contextlib.contextmanager
def _reward_errors_at(who: str, step: int):
    """Add the step to a :class:`RewardFunctionError` raised inside (the user's reward raised)."""
    try:
        yield
    except RewardFunctionError as err:
        if "at step" in str(err):
            raise
        raise RewardFunctionError(f"{who} at step {step}: {err}") from err.__cause__


def check_sampling_settings(config: Any) -> None:
    """C-M6: the update optimises ``softmax(logits / temperature)``; it must be the sampling distribution."""
    name = type(config).__name__
    if config.temperature <= 0:
        raise ValueError(
            f"{name}.temperature must be > 0, got {config.temperature}: the update scores tokens under "
            "softmax(logits / temperature), and greedy decoding (0) samples no distribution to optimise"
        )
    if getattr(config, "top_k", None) is not None:
        raise ValueError(
            f"{name}.top_k must be None, got {config.top_k}: top-k sampling draws from a truncated "
            "distribution that the update does not optimise (tokens outside the top k are never "
            "reinforced); lower the temperature instead"
        )


def default_sampler(config: Any) -> SampleFn:
    """A :class:`~artifex_rl.models.sampling.TokenSampler` with the config's sampling settings."""
    # Imported here: the reference samplers live with the models, a layer above the trainers.
    from artifex_rl.models.sampling import TokenSampler

    return TokenSampler(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_k=getattr(config, "top_k", None),
        eos_id=config.eos_id,
        pad_id=config.pad_id,
    )


def online_outputs(scored: ScoredCompletions) -> dict[str, Array]:
    """What an online step keeps in ``trainer.last_outputs`` (the sample tables read it)."""
    return {
        "completions": scored.completions.tokens,
        "completion_mask": scored.completions.completion_mask,
        "rewards": scored.rewards,
    }


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _compiled_sample_groups(graphdef, sample_fn, group_size, params, model_state, prompts, prompt_mask, key):
    """The host-reward path's sampling call; ``group_size`` is part of the compile key (C-L3)."""
    model = nnx.merge(graphdef, params, model_state)
    return sample_groups(sample_fn, model, prompts, key, group_size, prompt_mask=prompt_mask)


__all__ = ["OnlineGeneration", "check_sampling_settings", "default_sampler", "online_outputs"]
