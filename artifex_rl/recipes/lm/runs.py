"""The language-model recipes: ``lm-grpo``, ``lm-ppo``, ``lm-dpo`` and ``lm-reinforce`` (see the package docstring)."""

from __future__ import annotations

import dataclasses
import os
import time
from argparse import Namespace
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from artifex_rl.callbacks.samples import SampleTableLogger
from artifex_rl.events import Callback
from artifex_rl.models.transformer import TransformerLM
from artifex_rl.recipes.common import standard_callbacks, write_summary
from artifex_rl.recipes.lm.data import (
    DPO_BATCH_KEYS,
    CompletionSource,
    PairBatches,
    PromptBatches,
    filter_pairs,
    preference_pairs,
)
from artifex_rl.recipes.lm.evaluation import EvalCallback, RewardEvaluator, RunClock, preference_accuracy_fn
from artifex_rl.recipes.lm.pretrain import pretrain
from artifex_rl.recipes.lm.settings import (
    DPOSettings,
    GRPOSettings,
    LMSettings,
    PPOSettings,
    REINFORCESettings,
    Task,
    build_model,
    make_task,
)
from artifex_rl.rl import (
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    PPOConfig,
    PPOTrainer,
    REINFORCEConfig,
    REINFORCETrainer,
)
from artifex_rl.trainer import Trainer


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


def ppo_config(task: Task, s: PPOSettings, log_every: int, seed: int) -> PPOConfig:
    """The recipe's token-PPO config for ``task`` (sampling settings from the task)."""
    return PPOConfig(
        gamma=s.gamma,
        gae_lambda=s.gae_lambda,
        clip_param=s.clip_param,
        vf_coeff=s.vf_coeff,
        entropy_coeff=s.entropy_coeff,
        update_epochs=s.update_epochs,
        num_minibatches=s.num_minibatches,
        policy="tokens",
        kl_coeff=s.kl_coeff,
        max_new_tokens=task.answer_length,
        temperature=s.temperature,
        eos_id=task.tokenizer.eos_id,
        pad_id=task.tokenizer.pad_id,
        max_grad_norm=s.max_grad_norm,
        log_every_n_steps=log_every,
        seed=seed,
    )


def with_value_head(model: TransformerLM, task: Task, settings: LMSettings, seed: int) -> TransformerLM:
    """The pre-trained ``model`` with a (zero-initialised) value head on its trunk."""
    policy = build_model(task, settings.model, seed, value_head=True)
    nnx.update(policy, nnx.state(model))
    return policy


def run_ppo(args: Namespace, ppo: PPOSettings | None = None) -> dict[str, Any]:
    """``artifex-rl train lm-ppo``: online PPO with a value head from the pre-trained policy."""
    start = time.perf_counter()
    settings = _settings_from_args(args)
    ppo = ppo or PPOSettings()
    if getattr(args, "steps", None):
        ppo = dataclasses.replace(ppo, steps=args.steps)
    task, model, evaluator, info = _prepare(args, settings)
    config = ppo_config(task, ppo, settings.log_every, args.seed)
    run_config = {"recipe": args.recipe, **dataclasses.asdict(settings), "ppo": dataclasses.asdict(ppo)}
    callbacks, clock = _callbacks(args, settings, task, run_config)
    rl_start = time.perf_counter()
    policy = with_value_head(model, task, settings, args.seed)
    trainer = PPOTrainer(policy, optax.adam(ppo.learning_rate), config, reward_fn=task.reward_fn)
    prompts = PromptBatches(task, ppo.num_prompts, ppo.steps, seed=args.seed + 1)
    trainer.fit(prompts, max_steps=ppo.steps, callbacks=callbacks)
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
