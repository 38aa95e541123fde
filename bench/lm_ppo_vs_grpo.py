"""Token PPO next to GRPO on the LM recipes' task: training reward against wall time, one plot.

Both start from the same cached pre-trained policy (the ``lm-*`` recipes'
pre-training, seed 0), use the recipes' own configs (``lm.grpo_config``,
``lm.ppo_config``) and prompt streams, and run one after the other for the
same wall budget (compilation included), logging every ``--log-every``
steps. Written: ``<out>/lm_ppo_vs_grpo.json`` (the curves and the held-out
evaluation reward at the end) and the plot ``--plot``.

    .venv/bin/python bench/lm_ppo_vs_grpo.py --task digit_sum --budget 90 --plot docs/images/lm_ppo_vs_grpo.png
"""

from __future__ import annotations

import argparse
import json
import os
import time

import optax

from artifex_rl.recipes import lm
from artifex_rl.recipes.lm.evaluation import RunClock
from artifex_rl.rl import GRPOTrainer, PPOTrainer


class WallClock(RunClock):
    """The recipes' RunClock, plus ``(seconds since fit began, step, logged mean_reward)`` at every log;
    stops at the budget."""

    def __init__(self, budget: float):
        super().__init__()
        self.budget, self.rows = budget, []

    def on_log(self, trainer, metrics, step) -> None:  # metrics are host floats here: synced
        super().on_log(trainer, metrics, step)
        elapsed = time.perf_counter() - self.start
        self.rows.append({"seconds": elapsed, "step": step, "mean_reward": float(metrics["mean_reward"])})
        if elapsed > self.budget:
            trainer.should_stop = True


def run(name: str, task, model, settings, budget: float, log_every: int, seed: int) -> dict:
    clock = WallClock(budget)
    steps = 10_000  # the budget stops the run
    if name == "grpo":
        s = lm.GRPOSettings()
        trainer = GRPOTrainer(model, optax.adam(s.learning_rate), lm.grpo_config(task, s, log_every, seed),
                              reward_fn=task.reward_fn)
        prompts = lm.PromptBatches(task, s.num_prompts, 1000, seed=seed + 1)
    else:
        s = lm.PPOSettings()
        trainer = PPOTrainer(lm.with_value_head(model, task, settings, seed), optax.adam(s.learning_rate),
                             lm.ppo_config(task, s, log_every, seed), reward_fn=task.reward_fn)
        prompts = lm.PromptBatches(task, s.num_prompts, 1000, seed=seed + 1)
    trainer.fit(prompts, max_steps=steps, max_epochs=None, callbacks=[clock])
    evaluator = lm.RewardEvaluator(task, settings.eval_prompts)
    return {"curve": clock.rows, "steps": trainer.global_step, "first_step_seconds": clock.compile_seconds,
            "eval_reward": evaluator(trainer.model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digit_sum")
    parser.add_argument("--budget", type=float, default=90.0, help="wall seconds per algorithm (compile included)")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="runs/lm-pretrained", help="pre-trained policy cache directory")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    settings = lm.LMSettings(task=args.task)
    task = lm.make_task(args.task)
    base, _ = lm.pretrain(task, settings, args.seed, os.path.join(args.cache, args.task))
    initial = lm.RewardEvaluator(task, settings.eval_prompts)(base)
    results = {"task": args.task, "budget_seconds": args.budget, "initial_eval_reward": initial}
    for name in ("grpo", "ppo"):
        model, _ = lm.pretrain(task, settings, args.seed, os.path.join(args.cache, args.task))  # a fresh copy
        results[name] = run(name, task, model, settings, args.budget, args.log_every, args.seed)
        last = results[name]["curve"][-1]
        print(f"{name}: {results[name]['steps']} steps in {last['seconds']:.1f} s (first step, with its "
              f"compilation: {results[name]['first_step_seconds']:.1f} s), logged reward "
              f"{last['mean_reward']:.3f}, held-out eval {initial:.3f} -> {results[name]['eval_reward']:.3f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "lm_ppo_vs_grpo.json"), "w") as f:
        json.dump(results, f, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, label in (("grpo", "GRPO (64 prompts x 8)"), ("ppo", "PPO + value head (512 prompts)")):
            curve = results[name]["curve"]
            label += f", first step {results[name]['first_step_seconds']:.0f} s"
            ax.plot([r["seconds"] for r in curve], [r["mean_reward"] for r in curve], marker=".", label=label)
        ax.axhline(initial, color="gray", ls=":", label=f"pre-trained ({initial:.2f})")
        ax.set_xlabel("wall seconds since the start of RL (compilation included)")
        ax.set_ylabel("training mean reward")
        ax.set_title(f"{args.task}: token PPO vs GRPO, same base model")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
