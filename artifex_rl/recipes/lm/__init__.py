"""Language-model recipes: pre-train a tiny causal LM, then improve it with GRPO, DPO or REINFORCE.

``artifex-rl train lm-grpo|lm-ppo|lm-dpo|lm-reinforce [--task digit_sum|sort_digits]``
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
   * PPO online (the RLHF loop): the pre-trained policy gets a value head;
     each step samples one completion for each of ``num_prompts`` prompts,
     rewards the last token with the task reward and every token with
     ``-kl_coeff (log pi - log pi_ref)``, runs GAE over the completion tokens
     and ``update_epochs x num_minibatches`` clipped updates -- one compiled
     call per step (:class:`~artifex_rl.rl.PPOTrainer`, ``policy="tokens"``).
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

Modules: :mod:`.settings` (settings, tasks, the policy), :mod:`.pretrain`,
:mod:`.evaluation` (task reward, preference accuracy, callbacks), :mod:`.data`
(prompt batches, online completions, preference pairs) and :mod:`.runs` (the
recipes). Every sampling goes through
:func:`artifex_rl.rl.generation.sample_and_score`.
"""

from artifex_rl.recipes.lm.data import (
    DPO_BATCH_KEYS,
    CompletionSource,
    PairBatches,
    PromptBatches,
    filter_pairs,
    policy_provider,
    preference_pairs,
)
from artifex_rl.recipes.lm.evaluation import EvalCallback, RewardEvaluator, RunClock, preference_accuracy_fn
from artifex_rl.recipes.lm.pretrain import pretrain
from artifex_rl.recipes.lm.runs import (
    grpo_config,
    ppo_config,
    run_dpo,
    run_grpo,
    run_ppo,
    run_reinforce,
    with_value_head,
)
from artifex_rl.recipes.lm.settings import (
    EVAL_SEED,
    TASKS,
    DPOSettings,
    GRPOSettings,
    LMSettings,
    ModelSettings,
    PPOSettings,
    PretrainSettings,
    REINFORCESettings,
    Task,
    build_model,
    make_task,
)

__all__ = [
    "DPO_BATCH_KEYS",
    "EVAL_SEED",
    "TASKS",
    "CompletionSource",
    "DPOSettings",
    "EvalCallback",
    "GRPOSettings",
    "LMSettings",
    "ModelSettings",
    "PPOSettings",
    "PairBatches",
    "PretrainSettings",
    "PromptBatches",
    "REINFORCESettings",
    "RewardEvaluator",
    "RunClock",
    "Task",
    "build_model",
    "filter_pairs",
    "grpo_config",
    "make_task",
    "policy_provider",
    "preference_accuracy_fn",
    "ppo_config",
    "preference_pairs",
    "pretrain",
    "run_dpo",
    "run_grpo",
    "run_ppo",
    "run_reinforce",
    "with_value_head",
]
