"""Data of the language-model recipes: prompt batches, online completions, preference pairs."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from artifex_rl.core.snapshot import PolicyProvider, as_policy_provider
from artifex_rl.models.sampling import TokenSampler
from artifex_rl.recipes.lm.settings import Task
from artifex_rl.rl.generation import SampleFn, sample_and_score

_log = logging.getLogger(__name__)

Array = jax.Array


class PromptBatches:
    """``steps`` batches of ``{"observations": (num_prompts, P), "conditions": ...}``, made up front.

    All prompts come from one compiled call; each batch is a host slice, so
    iterating costs no device work. Re-iterable (``fit`` may run epochs).
    """

    def __init__(self, task: Task, num_prompts: int, steps: int, seed: int):
        prompts, conditions = task.sample_prompts(jax.random.key(seed), num_prompts * steps)
        self.prompts = np.asarray(prompts).reshape(steps, num_prompts, -1)
        conditions = np.asarray(conditions)
        self.conditions = conditions.reshape(steps, num_prompts, *conditions.shape[1:])

    def __len__(self) -> int:
        return self.prompts.shape[0]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for prompts, conditions in zip(self.prompts, self.conditions, strict=True):
            yield {"observations": prompts, "conditions": conditions}


def policy_provider(policy: Any) -> PolicyProvider:
    """A :data:`~artifex_rl.core.snapshot.PolicyProvider` from a provider, or a trainer."""
    if isinstance(policy, nnx.Module):
        raise TypeError(
            "policy must be a zero-argument callable returning a PolicySnapshot, or a trainer; got the "
            f"module {type(policy).__name__} (a source follows the *current* policy, not a fixed model)"
        )
    return as_policy_provider(policy)  # raises a TypeError naming what is expected


class CompletionSource:
    """Completions of the *current* policy with their rewards (REINFORCE's online data).

    Each batch is one compiled call (prompts, sampling, reward: one
    :func:`~artifex_rl.rl.generation.sample_and_score`) on the latest policy
    snapshot; it stays on the device, so the loop never waits for it.
    Infinite: use ``fit(..., max_steps=N, max_epochs=None)``.

    The batches depend on the policy (``depends_on_policy = True``): ``fit``
    must not read this source ahead of the update.

    Args:
      policy: a policy provider (``() -> PolicySnapshot``) or a trainer.
      task: prompts and reward.
      batch_size: completions per batch (one per prompt).
      seed: prompts and sampling keys (batch ``i`` uses ``fold_in(key(seed), i)``).
      temperature: of the default sampler. A trainer that scores the
        completions at temperature 1 (REINFORCE) optimises another
        distribution than the one sampled unless it is 1.
      sample_fn: a :class:`~artifex_rl.rl.generation.SampleFn` instead of the
        default :class:`~artifex_rl.models.sampling.TokenSampler`.

    Batch: ``observations (B, P)``, ``actions (B, N)``, ``completion_mask (B, N)``,
    ``rewards (B,)``.
    """

    depends_on_policy = True

    def __init__(
        self,
        policy: Any,
        task: Task,
        batch_size: int,
        seed: int,
        temperature: float = 1.0,
        sample_fn: SampleFn | None = None,
    ):
        self.policy = policy_provider(policy)
        self.key = jax.random.key(seed)
        self.batches = 0
        if temperature != 1.0 and sample_fn is None:
            _log.warning(
                "CompletionSource samples at temperature %s; a trainer that scores at temperature 1 "
                "(REINFORCE) then optimises another distribution than the one sampled", temperature,
            )
        sample_fn = sample_fn or TokenSampler(
            max_new_tokens=task.answer_length,
            temperature=temperature,
            eos_id=task.tokenizer.eos_id,
            pad_id=task.tokenizer.pad_id,
        )
        reward_fn = task.reward_fn

        @functools.partial(jax.jit, static_argnums=0)
        def sample(graphdef, params, model_state, key):
            prompt_key, sample_key = jax.random.split(key)
            prompts, conditions = task.sample_prompts(prompt_key, batch_size)
            model = nnx.merge(graphdef, params, model_state)
            scored = sample_and_score(sample_fn, reward_fn, model, prompts, conditions, sample_key)
            batch = scored.as_batch()
            del batch["log_probs"]  # REINFORCE scores the tokens itself
            return batch

        self._sample = sample

    def __iter__(self) -> Iterator[dict[str, Array]]:
        while True:
            key = jax.random.fold_in(self.key, self.batches)
            self.batches += 1
            snapshot = self.policy()
            yield self._sample(snapshot.graphdef, snapshot.params, snapshot.model_state, key)

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.batches = int(state["batches"])


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _sample_pairs(graphdef, sample_fn, reward_fn, state, prompts, conditions, key):
    return sample_and_score(sample_fn, reward_fn, nnx.merge(graphdef, state), prompts, conditions, key, 2)


def preference_pairs(model: nnx.Module, task: Task, key: Array, num_prompts: int) -> dict[str, np.ndarray]:
    """Two sampled completions per prompt, ranked by the task reward; ties dropped.

    Returns host arrays with one row per non-tied pair: ``prompts (M, P)``,
    ``chosen``/``rejected (M, N)``, ``chosen_mask``/``rejected_mask (M, N)``,
    ``chosen_reward``/``rejected_reward (M,)``. Narrow them further with
    :func:`filter_pairs`.
    """
    n = task.answer_length
    graphdef, state = nnx.split(model)
    prompt_key, sample_key = jax.random.split(key)
    prompts, conditions = task.sample_prompts(prompt_key, num_prompts)
    sampler = TokenSampler(max_new_tokens=n, eos_id=task.tokenizer.eos_id, pad_id=task.tokenizer.pad_id)
    scored = _sample_pairs(graphdef, sampler, task.reward_fn, state, prompts, conditions, sample_key)
    completions, mask, rewards = jax.device_get(
        (
            scored.completions.tokens.reshape(num_prompts, 2, n),
            scored.completions.completion_mask.reshape(num_prompts, 2, n),
            scored.rewards.reshape(num_prompts, 2),
        )
    )
    first_wins = rewards[:, 0] > rewards[:, 1]
    win, lose = np.where(first_wins, 0, 1), np.where(first_wins, 1, 0)
    rows = np.arange(num_prompts)
    pairs = {
        "prompts": np.asarray(prompts),
        "chosen": completions[rows, win],
        "rejected": completions[rows, lose],
        "chosen_mask": mask[rows, win],
        "rejected_mask": mask[rows, lose],
        "chosen_reward": rewards[rows, win],
        "rejected_reward": rewards[rows, lose],
    }
    return filter_pairs(pairs, 0.0)


def filter_pairs(pairs: Mapping[str, np.ndarray], min_reward_gap: float) -> dict[str, np.ndarray]:
    """The pairs whose chosen reward beats the rejected one by at least ``min_reward_gap`` (ties never kept)."""
    gap = pairs["chosen_reward"] - pairs["rejected_reward"]
    # The tolerance keeps float32 rounding (0.75 - 0.5 = 0.2499999) from dropping pairs at the threshold.
    keep = (gap > 0) & (gap >= min_reward_gap - 1e-6)
    return {k: v[keep] for k, v in pairs.items()}


#: Keys of a pair set that go into a DPO batch (the rewards are for reporting).
DPO_BATCH_KEYS = ("prompts", "chosen", "rejected", "chosen_mask", "rejected_mask")


class PairBatches:
    """Shuffled minibatches of preference pairs, reshuffled every pass; infinite."""

    def __init__(self, pairs: Mapping[str, np.ndarray], batch_size: int, seed: int):
        self.pairs = {k: pairs[k] for k in DPO_BATCH_KEYS}
        self.size = len(self.pairs["prompts"])
        if self.size < batch_size:
            raise ValueError(f"only {self.size} preference pairs, fewer than one batch of {batch_size}")
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while True:
            order = self.rng.permutation(self.size)
            for start in range(0, self.size - self.batch_size + 1, self.batch_size):
                idx = order[start : start + self.batch_size]
                yield {k: v[idx] for k, v in self.pairs.items()}
