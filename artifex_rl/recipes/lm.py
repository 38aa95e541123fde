"""Language-model recipes: pre-train a tiny causal LM, then improve it with GRPO, DPO or REINFORCE.

``artifex-rl train lm-grpo|lm-dpo|lm-reinforce [--task digit_sum|sort_digits]``
runs, in one command:

1. **Pre-training** (cached): :class:`~artifex_rl.autoregressive.AutoregressiveTrainer`
   on the task's demonstrations, a ``noise`` fraction of which answer with
   random (well-formed) digits, so the policy learns the format but only
   partly the task (mean reward about 0.3-0.45 at temperature 1). The result
   is saved to ``<run_dir>/pretrained/`` with the settings that produced it;
   a second invocation with the same settings loads it instead of training.
2. **Evaluation** of the pre-trained policy: mean task reward on a fixed set
   of ``eval_prompts`` prompts (fixed key, temperature-1 sampling, the same
   for every seed and algorithm).
3. **RL** with the trainer's ``fit``:

   * GRPO online: each step samples ``num_generations`` completions for each
     of ``num_prompts`` prompts with the KV-cache sampler, scores them with
     the task reward, normalises within groups and updates -- one compiled
     call per step (:class:`~artifex_rl.rl.GRPOTrainer` online mode).
   * DPO: preference pairs from the pre-trained policy (two completions per
     prompt; the higher-reward one is chosen; pairs whose rewards differ by
     less than ``min_reward_gap`` are skipped, ties always), trained with
     :class:`~artifex_rl.rl.DPOTrainer` plus an NLL term on the chosen
     completion (RPO, Pang et al. 2024), which keeps DPO from lowering the
     likelihood of good answers together with bad ones.
   * REINFORCE: each step samples ``batch_size`` completions with the
     current policy (:class:`CompletionSource`) and takes a
     :class:`~artifex_rl.rl.REINFORCETrainer` step (``policy="tokens"``,
     returns normalised over the batch).
4. **Evaluation** again, then ``summary.json``.

Run directory: ``metrics.jsonl`` (rows with ``step``, ``mean_reward``,
``loss``, ...), ``metrics.csv``, ``metrics.png``, ``samples.jsonl`` (decoded
generations every few logs), ``checkpoints/`` (the final trainer state),
``pretrained/`` and ``summary.json`` (``initial_mean_reward``,
``final_mean_reward``, ``wall_seconds`` and timings). For DPO,
``mean_reward`` in the metrics rows is the evaluation reward measured at each
log step (DPO has no reward of its own during training).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from argparse import Namespace
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl.autoregressive import AutoregressiveTrainer
from artifex_rl.callbacks.samples import SampleTableLogger
from artifex_rl.config import TrainerConfig
from artifex_rl.distributions import score_sequences
from artifex_rl.events import Callback
from artifex_rl.models.transformer import Sampler, TransformerLM, sample_with_cache
from artifex_rl.recipes.common import standard_callbacks, write_summary
from artifex_rl.rl import (
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    REINFORCEConfig,
    REINFORCETrainer,
)
from artifex_rl.rl.losses import masked_sum
from artifex_rl.tasks import DigitSumTask, SortDigitsTask
from artifex_rl.trainer import Trainer

_log = logging.getLogger(__name__)

Array = jax.Array
Task = DigitSumTask | SortDigitsTask

TASKS: dict[str, Callable[[], Task]] = {"digit_sum": DigitSumTask, "sort_digits": SortDigitsTask}

#: Seed of the held-out evaluation prompts and of their sampling key: the same
#: for every run, so rewards are comparable across seeds and algorithms.
EVAL_SEED = 20_240_601


# --------------------------------------------------------------------------- #
# Settings
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The policy: a :class:`TransformerLM` with ``max_len = P + answer_length``."""

    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """Teacher-forced pre-training on ``steps * batch_size`` fresh demonstrations.

    ``noise`` is the fraction of demonstrations answering with random digits;
    it sets where RL starts (see :mod:`artifex_rl.tasks`): 0.7 gives a mean
    reward of about 0.3-0.45 on both tasks with these settings.
    """

    noise: float = 0.7
    steps: int = 300
    batch_size: int = 256
    learning_rate: float = 3e-3


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """Online GRPO: ``num_prompts x num_generations`` completions per step."""

    steps: int = 150
    num_prompts: int = 64
    num_generations: int = 8
    learning_rate: float = 1e-3
    beta: float = 0.04
    clip_param: float = 0.2
    entropy_coeff: float = 0.0
    temperature: float = 1.0
    max_grad_norm: float = 1.0


@dataclasses.dataclass(frozen=True)
class DPOSettings:
    """Offline DPO (+ NLL on chosen) on pairs sampled from the pre-trained policy."""

    steps: int = 800
    batch_size: int = 64
    learning_rate: float = 1e-3
    beta: float = 0.5
    nll_coeff: float = 0.2
    train_prompts: int = 32_768
    heldout_prompts: int = 2_048
    min_reward_gap: float = 0.25
    max_grad_norm: float = 1.0


@dataclasses.dataclass(frozen=True)
class REINFORCESettings:
    """Online REINFORCE: ``batch_size`` fresh completions per step, returns normalised over the batch."""

    steps: int = 300
    batch_size: int = 512
    learning_rate: float = 5e-4
    entropy_coeff: float = 0.0
    temperature: float = 1.0
    max_grad_norm: float = 1.0


@dataclasses.dataclass(frozen=True)
class LMSettings:
    """What defines a language-model run besides the algorithm's own settings."""

    task: str = "digit_sum"
    model: ModelSettings = ModelSettings()
    pretrain: PretrainSettings = PretrainSettings()
    eval_prompts: int = 512
    log_every: int = 10
    #: Decoded samples are recorded every this many logs.
    samples_every_n_logs: int = 5

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {sorted(TASKS)}")


def make_task(name: str) -> Task:
    """The task registered as ``name`` (``digit_sum`` or ``sort_digits``)."""
    try:
        return TASKS[name]()
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}") from None


def build_model(task: Task, settings: ModelSettings, seed: int) -> TransformerLM:
    """A fresh policy sized for ``task`` (prompt + answer fit in ``max_len``)."""
    return TransformerLM(
        task.tokenizer.vocab_size,
        task.prompt_length + task.answer_length,
        d_model=settings.d_model,
        num_layers=settings.num_layers,
        num_heads=settings.num_heads,
        mlp_ratio=settings.mlp_ratio,
        rngs=nnx.Rngs(seed),
    )


# --------------------------------------------------------------------------- #
# Pre-training (cached in the run directory)
# --------------------------------------------------------------------------- #
def _pretrain_fingerprint(task: Task, settings: LMSettings, seed: int) -> dict[str, Any]:
    return {
        "task": settings.task,
        "task_fields": {k: v for k, v in dataclasses.asdict(task).items() if k != "tokenizer"},
        "model": dataclasses.asdict(settings.model),
        "pretrain": dataclasses.asdict(settings.pretrain),
        "seed": seed,
    }


def pretrain(
    task: Task, settings: LMSettings, seed: int, cache_dir: str | None = None
) -> tuple[TransformerLM, dict[str, Any]]:
    """The pre-trained policy, loaded from ``cache_dir`` when it holds one with the same settings.

    Args:
      task: the task whose demonstrations are imitated.
      settings: model and pre-training settings.
      seed: model init and demonstration sampling.
      cache_dir: ``<run_dir>/pretrained``; ``None``: no caching.

    Returns:
      ``(model, info)`` with ``info``: ``pretrain_cached``, ``pretrain_seconds``
      and (when trained now) ``pretrain_loss`` / ``pretrain_token_accuracy``.
    """
    fingerprint = _pretrain_fingerprint(task, settings, seed)
    checkpoint = settings_path = None
    if cache_dir is not None:
        checkpoint = os.path.join(cache_dir, "checkpoint")
        settings_path = os.path.join(cache_dir, "settings.json")
        cached = _read_json(settings_path)
        if cached == fingerprint and os.path.isdir(checkpoint):
            from artifex_rl.checkpointing import is_complete_checkpoint, load_model

            if is_complete_checkpoint(checkpoint):
                start = time.perf_counter()
                model = load_model(checkpoint, lambda: build_model(task, settings.model, seed))
                return model, {"pretrain_cached": True, "pretrain_seconds": time.perf_counter() - start}
        if cached is not None:
            _log.warning("pre-trained policy in %s has other settings; pre-training again", cache_dir)

    start = time.perf_counter()
    p = settings.pretrain
    model = build_model(task, settings.model, seed)
    trainer = AutoregressiveTrainer(
        model, optax.adam(p.learning_rate), TrainerConfig(log_every_n_steps=max(1, p.steps // 4), seed=seed)
    )
    # Every step sees fresh demonstrations: generated in one compiled call, sliced on the host.
    demos = task.demonstrations(jax.random.key(seed), p.steps * p.batch_size, noise=p.noise)
    tokens = np.asarray(demos.tokens).reshape(p.steps, p.batch_size, -1)
    loss_mask = np.asarray(demos.loss_mask).reshape(p.steps, p.batch_size, -1)
    loader = [{"tokens": tokens[i], "loss_mask": loss_mask[i]} for i in range(p.steps)]
    trainer.fit(loader, max_steps=p.steps)
    info: dict[str, Any] = {
        "pretrain_cached": False,
        "pretrain_seconds": time.perf_counter() - start,
        "pretrain_loss": trainer.callback_metrics.get("loss"),
        "pretrain_token_accuracy": trainer.callback_metrics.get("token_accuracy"),
    }
    if cache_dir is not None:
        from artifex_rl.checkpointing import save_trainer_checkpoint

        os.makedirs(cache_dir, exist_ok=True)
        save_trainer_checkpoint(trainer, checkpoint, overwrite=True)
        # The settings file is written last: a cache without it is never trusted.
        with open(settings_path + ".tmp", "w") as f:
            json.dump(fingerprint, f, indent=2, sort_keys=True)
        os.replace(settings_path + ".tmp", settings_path)
    return model, info


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- #
# Evaluation
# --------------------------------------------------------------------------- #
class RewardEvaluator:
    """Mean task reward of a policy on a fixed prompt set (fixed key, temperature-1 sampling).

    Sampling and scoring are one compiled call; the prompts and the sampling
    key never change, so two evaluations of the same parameters agree exactly.
    """

    def __init__(self, task: Task, num_prompts: int = 512, seed: int = EVAL_SEED, temperature: float = 1.0):
        self.task = task
        self.prompts, self.conditions = task.sample_prompts(jax.random.key(seed), num_prompts)
        self.key = jax.random.key(seed + 1)
        self.temperature = temperature
        self._fn: Callable | None = None
        self._graphdef: nnx.GraphDef | None = None

    def _compiled(self, graphdef: nnx.GraphDef) -> Callable:
        if self._fn is None or graphdef != self._graphdef:
            task, p = self.task, self.task.prompt_length
            sampler = functools.partial(
                sample_with_cache,
                max_new_tokens=task.answer_length,
                temperature=self.temperature,
                eos_id=task.tokenizer.eos_id,
                pad_id=task.tokenizer.pad_id,
            )

            @jax.jit
            def mean_reward(state, prompts, conditions, key):
                out = sampler(nnx.merge(graphdef, state), prompts, key)
                return jnp.mean(task.reward_fn(out.tokens[:, p:], conditions))

            self._fn, self._graphdef = mean_reward, graphdef
        return self._fn

    def __call__(self, model: nnx.Module) -> float:
        graphdef, state = nnx.split(model)
        return float(self._compiled(graphdef)(state, self.prompts, self.conditions, self.key))


# --------------------------------------------------------------------------- #
# Data sources
# --------------------------------------------------------------------------- #
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


class CompletionSource:
    """Completions of the trainer's *current* policy with their rewards (REINFORCE's data).

    Each batch is one compiled call (prompts, KV-cache sampling, reward) on
    the trainer's latest parameters; it stays on the device, so the loop
    never waits for it. Infinite: use ``fit(..., max_steps=N, max_epochs=None)``.

    Batch: ``observations (B, P)``, ``actions (B, N)``, ``completion_mask (B, N)``,
    ``rewards (B,)``.
    """

    def __init__(self, trainer: Trainer, task: Task, batch_size: int, seed: int, temperature: float = 1.0):
        self.trainer = trainer
        self.key = jax.random.key(seed)
        self.batches = 0
        graphdef, p = trainer.graphdef, task.prompt_length

        @jax.jit
        def sample(params, model_state, key):
            prompt_key, sample_key = jax.random.split(key)
            prompts, conditions = task.sample_prompts(prompt_key, batch_size)
            out = sample_with_cache(
                nnx.merge(graphdef, params, model_state),
                prompts,
                sample_key,
                max_new_tokens=task.answer_length,
                temperature=temperature,
                eos_id=task.tokenizer.eos_id,
                pad_id=task.tokenizer.pad_id,
            )
            completions, mask = out.tokens[:, p:], out.completion_mask[:, p:]
            rewards = task.reward_fn(completions, conditions, completion_mask=mask)
            return {
                "observations": prompts,
                "actions": completions,
                "completion_mask": mask,
                "rewards": rewards,
            }

        self._sample = sample

    def __iter__(self) -> Iterator[dict[str, Array]]:
        while True:
            key = jax.random.fold_in(self.key, self.batches)
            self.batches += 1
            state = self.trainer.train_state
            yield self._sample(state["params"], state["model_state"], key)

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.batches = int(state["batches"])


def preference_pairs(model: nnx.Module, task: Task, key: Array, num_prompts: int) -> dict[str, np.ndarray]:
    """Two sampled completions per prompt, ranked by the task reward; ties dropped.

    Returns host arrays with one row per non-tied pair: ``prompts (M, P)``,
    ``chosen``/``rejected (M, N)``, ``chosen_mask``/``rejected_mask (M, N)``,
    ``chosen_reward``/``rejected_reward (M,)``. Narrow them further with
    :func:`filter_pairs`.
    """
    p, n = task.prompt_length, task.answer_length
    graphdef, state = nnx.split(model)
    prompt_key, sample_key = jax.random.split(key)
    prompts, conditions = task.sample_prompts(prompt_key, num_prompts)
    sampler = Sampler(graphdef, max_new_tokens=n, eos_id=task.tokenizer.eos_id, pad_id=task.tokenizer.pad_id)
    out = sampler(state, jnp.repeat(prompts, 2, axis=0), key=sample_key)
    completions, mask = out.tokens[:, p:], out.completion_mask[:, p:]
    rewards = task.reward_fn(completions, jnp.repeat(conditions, 2, axis=0), completion_mask=mask)
    completions, mask, rewards = jax.device_get(
        (
            completions.reshape(num_prompts, 2, n),
            mask.reshape(num_prompts, 2, n),
            rewards.reshape(num_prompts, 2),
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


def preference_accuracy_fn(graphdef: nnx.GraphDef, reference_state: Any) -> Callable[[Any, Mapping], Array]:
    """``accuracy(state, pairs)``: fraction of pairs whose implicit DPO reward ranks chosen first.

    The implicit reward of a completion is ``log pi(y|x) - log pi_ref(y|x)``
    (``beta`` does not change the ranking); a pair counts as correct when
    the chosen one's is strictly larger, so the reference itself scores 0.
    """
    reference_state = jax.tree.map(jnp.array, reference_state)

    def sequence_log_probs(model, prompts, completions, mask):
        return masked_sum(score_sequences(model, prompts, completions)[0], mask, axis=-1)

    @jax.jit
    def accuracy(state, pairs):
        policy, reference = nnx.merge(graphdef, state), nnx.merge(graphdef, reference_state)
        margin = jnp.zeros(pairs["prompts"].shape[0])
        for sign, key in ((1.0, "chosen"), (-1.0, "rejected")):
            args = (pairs["prompts"], pairs[key], pairs[f"{key}_mask"])
            margin += sign * (sequence_log_probs(policy, *args) - sequence_log_probs(reference, *args))
        return jnp.mean(margin > 0)

    return accuracy


# --------------------------------------------------------------------------- #
# Callbacks
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# Recipes
# --------------------------------------------------------------------------- #
def _settings_from_args(args: Namespace) -> LMSettings:
    return LMSettings(
        task=getattr(args, "task", None) or "digit_sum", log_every=getattr(args, "log_every", None) or 10
    )


def _prepare(
    args: Namespace, settings: LMSettings
) -> tuple[Task, TransformerLM, RewardEvaluator, dict[str, Any]]:
    task = make_task(settings.task)
    os.makedirs(args.run_dir, exist_ok=True)
    model, info = pretrain(task, settings, args.seed, os.path.join(args.run_dir, "pretrained"))
    evaluator = RewardEvaluator(task, settings.eval_prompts)
    info["initial_mean_reward"] = evaluator(model)
    return task, model, evaluator, info


def _callbacks(
    args: Namespace,
    settings: LMSettings,
    task: Task,
    run_config: Mapping[str, Any],
    before_loggers: Sequence[Callback] = (),
) -> tuple[list[Callback], RunClock]:
    clock = RunClock()
    samples = SampleTableLogger(task.tokenizer, args.run_dir, every_n_logs=settings.samples_every_n_logs)
    # Order matters for on_log: callbacks that add metrics run before the loggers.
    callbacks = [*before_loggers, clock, *standard_callbacks(args, run_config=run_config), samples]
    return callbacks, clock


def _finish(
    args: Namespace,
    trainer: Trainer,
    evaluator: RewardEvaluator,
    clock: RunClock,
    info: dict[str, Any],
    start: float,
    rl_start: float,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    jax.block_until_ready(trainer.train_state)
    rl_seconds = time.perf_counter() - rl_start
    final = evaluator(trainer.model)
    summary = {
        "recipe": args.recipe,
        "seed": args.seed,
        **info,
        "final_mean_reward": final,
        "reward_gain": final - info["initial_mean_reward"],
        "rl_steps": trainer.global_step,
        "rl_seconds": rl_seconds,
        **clock.summary(),
        "last_logged": dict(trainer.callback_metrics),
        **(extra or {}),
        "wall_seconds": time.perf_counter() - start,
    }
    write_summary(args.run_dir, summary)
    return summary


def grpo_config(task: Task, s: GRPOSettings, log_every: int, seed: int) -> GRPOConfig:
    """The recipe's GRPO config for ``task`` (sampling settings from the task)."""
    return GRPOConfig(
        num_generations=s.num_generations,
        clip_param=s.clip_param,
        beta=s.beta,
        entropy_coeff=s.entropy_coeff,
        policy="tokens",
        max_new_tokens=task.answer_length,
        temperature=s.temperature,
        eos_id=task.tokenizer.eos_id,
        pad_id=task.tokenizer.pad_id,
        max_grad_norm=s.max_grad_norm,
        log_every_n_steps=log_every,
        seed=seed,
    )


def run_grpo(args: Namespace, grpo: GRPOSettings | None = None) -> dict[str, Any]:
    """``artifex-rl train lm-grpo``: online GRPO from the pre-trained policy."""
    start = time.perf_counter()
    settings = _settings_from_args(args)
    grpo = grpo or GRPOSettings()
    if getattr(args, "steps", None):
        grpo = dataclasses.replace(grpo, steps=args.steps)
    task, model, evaluator, info = _prepare(args, settings)
    config = grpo_config(task, grpo, settings.log_every, args.seed)
    run_config = {"recipe": args.recipe, **dataclasses.asdict(settings), "grpo": dataclasses.asdict(grpo)}
    callbacks, clock = _callbacks(args, settings, task, run_config)
    rl_start = time.perf_counter()
    trainer = GRPOTrainer(model, optax.adam(grpo.learning_rate), config, reward_fn=task.reward_fn)
    prompts = PromptBatches(task, grpo.num_prompts, grpo.steps, seed=args.seed + 1)
    trainer.fit(prompts, max_steps=grpo.steps, callbacks=callbacks)
    return _finish(args, trainer, evaluator, clock, info, start, rl_start)


def run_dpo(args: Namespace, dpo: DPOSettings | None = None) -> dict[str, Any]:
    """``artifex-rl train lm-dpo``: DPO (+ NLL) on pairs sampled from the pre-trained policy."""
    start = time.perf_counter()
    settings = _settings_from_args(args)
    dpo = dpo or DPOSettings()
    if getattr(args, "steps", None):
        dpo = dataclasses.replace(dpo, steps=args.steps)
    task, model, evaluator, info = _prepare(args, settings)
    pair_start = time.perf_counter()
    # Training and held-out pairs: different prompt/sampling keys, same policy and filter.
    key = jax.random.key(args.seed + 2)
    train_pairs = filter_pairs(
        preference_pairs(model, task, jax.random.fold_in(key, 0), dpo.train_prompts), dpo.min_reward_gap
    )
    heldout_all = preference_pairs(model, task, jax.random.fold_in(key, 1), dpo.heldout_prompts)
    heldout = filter_pairs(heldout_all, dpo.min_reward_gap)
    info["pair_seconds"] = time.perf_counter() - pair_start
    info["train_pairs"] = len(train_pairs["prompts"])
    info["heldout_pairs"] = len(heldout["prompts"])

    graphdef, reference_state = nnx.split(model)
    accuracy = preference_accuracy_fn(graphdef, reference_state)
    heldout_batch = {k: jnp.asarray(heldout[k]) for k in DPO_BATCH_KEYS}
    heldout_all_batch = {k: jnp.asarray(heldout_all[k]) for k in DPO_BATCH_KEYS}

    def heldout_accuracy(trainer: Trainer) -> float:
        return float(accuracy(nnx.state(trainer.model), heldout_batch))

    config = DPOConfig(
        beta=dpo.beta,
        nll_coeff=dpo.nll_coeff,
        policy="tokens",
        max_grad_norm=dpo.max_grad_norm,
        log_every_n_steps=settings.log_every,
        seed=args.seed,
    )
    run_config = {"recipe": args.recipe, **dataclasses.asdict(settings), "dpo": dataclasses.asdict(dpo)}
    evaluate = EvalCallback(evaluator, {"heldout_preference_accuracy": heldout_accuracy})
    callbacks, clock = _callbacks(args, settings, task, run_config, before_loggers=[evaluate])
    rl_start = time.perf_counter()
    trainer = DPOTrainer(model, optax.adam(dpo.learning_rate), config)
    trainer.fit(
        PairBatches(train_pairs, dpo.batch_size, args.seed),
        max_steps=dpo.steps,
        max_epochs=None,
        callbacks=callbacks,
    )
    extra = {
        "heldout_preference_accuracy": heldout_accuracy(trainer),
        # Every non-tied pair, whatever its reward gap: how the filter changes the number.
        "heldout_preference_accuracy_all_gaps": float(accuracy(nnx.state(trainer.model), heldout_all_batch)),
        "heldout_pairs_all_gaps": len(heldout_all["prompts"]),
    }
    return _finish(args, trainer, evaluator, clock, info, start, rl_start, extra)


def run_reinforce(args: Namespace, reinforce: REINFORCESettings | None = None) -> dict[str, Any]:
    """``artifex-rl train lm-reinforce``: REINFORCE on fresh completions of the current policy."""
    start = time.perf_counter()
    settings = _settings_from_args(args)
    reinforce = reinforce or REINFORCESettings()
    if getattr(args, "steps", None):
        reinforce = dataclasses.replace(reinforce, steps=args.steps)
    task, model, evaluator, info = _prepare(args, settings)
    config = REINFORCEConfig(
        normalize_returns=True,
        entropy_coeff=reinforce.entropy_coeff,
        policy="tokens",
        max_grad_norm=reinforce.max_grad_norm,
        log_every_n_steps=settings.log_every,
        seed=args.seed,
    )
    run_config = {
        "recipe": args.recipe,
        **dataclasses.asdict(settings),
        "reinforce": dataclasses.asdict(reinforce),
    }
    callbacks, clock = _callbacks(args, settings, task, run_config)
    rl_start = time.perf_counter()
    trainer = REINFORCETrainer(model, optax.adam(reinforce.learning_rate), config)
    source = CompletionSource(
        trainer, task, reinforce.batch_size, seed=args.seed + 1, temperature=reinforce.temperature
    )
    trainer.fit(source, max_steps=reinforce.steps, max_epochs=None, callbacks=callbacks)
    return _finish(args, trainer, evaluator, clock, info, start, rl_start)
