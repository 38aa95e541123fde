"""Evaluation for the language-model recipes: the task reward of a policy, DPO's preference
accuracy, and the callbacks that report them and the run's timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from artifex_rl.events import Callback
from artifex_rl.models.sampling import TokenSampler
from artifex_rl.recipes.lm.settings import EVAL_SEED, Task
from artifex_rl.rl.generation import SampleFn, sample_and_score, score_completions
from artifex_rl.trainer import Trainer

Array = jax.Array


class RewardEvaluator:
    """Mean task reward of a policy on a fixed prompt set (fixed key, temperature-1 sampling).

    Sampling and scoring are one compiled call
    (:func:`~artifex_rl.rl.generation.sample_and_score`); the prompts and the
    sampling key never change, so two evaluations of the same parameters
    agree exactly.

    Args:
      task: the task (prompts, reward).
      num_prompts: size of the fixed prompt set.
      seed: prompts and sampling key.
      temperature: of the default sampler.
      sample_fn: a :class:`~artifex_rl.rl.generation.SampleFn` instead of
        the default :class:`~artifex_rl.models.sampling.TokenSampler`.
    """

    def __init__(
        self,
        task: Task,
        num_prompts: int = 512,
        seed: int = EVAL_SEED,
        temperature: float = 1.0,
        sample_fn: SampleFn | None = None,
    ):
        self.task = task
        self.prompts, self.conditions = task.sample_prompts(jax.random.key(seed), num_prompts)
        self.key = jax.random.key(seed + 1)
        self.temperature = temperature
        self.sample_fn = sample_fn or TokenSampler(
            max_new_tokens=task.answer_length,
            temperature=temperature,
            eos_id=task.tokenizer.eos_id,
            pad_id=task.tokenizer.pad_id,
        )
        # task.reward_fn builds a new object on every access: take it once.
        self.reward_fn = task.reward_fn
        self._fn: Callable | None = None
        self._graphdef: nnx.GraphDef | None = None

    def _compiled(self, graphdef: nnx.GraphDef) -> Callable:
        if self._fn is None or graphdef != self._graphdef:
            sample_fn, reward_fn = self.sample_fn, self.reward_fn

            @jax.jit
            def mean_reward(state, prompts, conditions, key):
                model = nnx.merge(graphdef, state)
                return jnp.mean(sample_and_score(sample_fn, reward_fn, model, prompts, conditions, key).rewards)

            self._fn, self._graphdef = mean_reward, graphdef
        return self._fn

    def __call__(self, model: nnx.Module) -> float:
        graphdef, state = nnx.split(model)
        return float(self._compiled(graphdef)(state, self.prompts, self.conditions, self.key))


def preference_accuracy_fn(graphdef: nnx.GraphDef, reference_state: Any) -> Callable[[Any, Mapping], Array]:
    """``accuracy(state, pairs)``: fraction of pairs whose implicit DPO reward ranks chosen first.

    The implicit reward of a completion is ``log pi(y|x) - log pi_ref(y|x)``
    (``beta`` does not change the ranking); a pair counts as correct when
    the chosen one's is strictly larger, so the reference itself scores 0.
    """
    reference_state = jax.tree.map(jnp.array, reference_state)

    def sequence_log_probs(model, prompts, completions, mask):
        log_probs = score_completions(model, prompts, completions)[0]
        return jnp.sum(jnp.where(mask > 0, log_probs, 0.0), axis=-1)

    @jax.jit
    def accuracy(state, pairs):
        policy, reference = nnx.merge(graphdef, state), nnx.merge(graphdef, reference_state)
        margin = jnp.zeros(pairs["prompts"].shape[0])
        for sign, key in ((1.0, "chosen"), (-1.0, "rejected")):
            args = (pairs["prompts"], pairs[key], pairs[f"{key}_mask"])
            margin += sign * (sequence_log_probs(policy, *args) - sequence_log_probs(reference, *args))
        return jnp.mean(margin > 0)

    return accuracy


class RunClock(Callback):
    """Compile time (first step, synced once) and when the logged ``metric`` first reached ``threshold``."""

    def __init__(self, metric: str = "mean_reward", threshold: float = 0.9):
        self.metric, self.threshold = metric, threshold
        self.start = 0.0
        self.compile_seconds: float | None = None
        self.reached_step: int | None = None
        self.reached_seconds: float | None = None

    def on_train_begin(self, trainer) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, metrics, step) -> None:
        if self.compile_seconds is None:
            jax.block_until_ready(metrics)  # one sync, on the first step only
            self.compile_seconds = time.perf_counter() - self.start

    def on_log(self, trainer, metrics, step) -> None:
        if self.reached_step is None and metrics.get(self.metric, -np.inf) >= self.threshold:
            self.reached_step, self.reached_seconds = step, time.perf_counter() - self.start

    def summary(self) -> dict[str, Any]:
        key = f"{self.metric}_{self.threshold:g}"
        return {
            "compile_seconds": self.compile_seconds,
            f"first_step_{key}": self.reached_step,
            f"seconds_to_{key}": self.reached_seconds,
        }


class EvalCallback(Callback):
    """Adds ``mean_reward`` (evaluation reward) and optional extra metrics at every log.

    Place before the loggers: ``on_log`` metrics are shared in callback order.
    """

    def __init__(
        self, evaluator: RewardEvaluator, extra: Mapping[str, Callable[[Trainer], float]] | None = None
    ):
        self.evaluator = evaluator
        self.extra = dict(extra or {})

    def on_log(self, trainer, metrics, step) -> None:
        metrics["mean_reward"] = self.evaluator(trainer.model)
        for name, fn in self.extra.items():
            metrics[name] = float(fn(trainer))
