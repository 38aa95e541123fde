"""The ``artifex-rl`` command: ``artifex-rl train RECIPE [options]``.

Each recipe (``cartpole-ppo``, ``lm-grpo``, ...) lives in
:mod:`artifex_rl.recipes` and writes the same outputs into ``--run-dir``:
``metrics.jsonl`` (one JSON object per logged step), ``summary.json``, the
``metrics.png`` learning curves and a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from artifex_rl.recipes import RECIPES, load_recipe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="artifex-rl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a recipe and write metrics, summary, plot, checkpoint")
    train.add_argument("recipe", choices=sorted(RECIPES), help="what to train")
    train.add_argument("--run-dir", default=None, help="output directory (default: runs/<recipe>)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--total-timesteps", type=int, default=None,
                       help="environment steps (environment recipes; default per recipe)")
    train.add_argument("--num-envs", type=int, default=None, help="parallel environments (environment recipes)")
    train.add_argument("--steps", type=int, default=None, help="RL steps (language-model recipes; default per recipe)")
    train.add_argument("--task", default=None, help="language-model task (lm-* recipes), e.g. digit_sum or sort_digits")
    train.add_argument("--log-every", type=int, default=None, help="log metrics every N trainer steps")
    train.add_argument("--steps-per-execution", type=int, default=None,
                       help="trainer steps per compiled call (environment recipes; default 10)")
    train.add_argument("--wandb-mode", default="disabled", choices=["online", "offline", "disabled"],
                       help="Weights & Biases mode (default: disabled; offline needs no account)")
    train.add_argument("--wandb-project", default="artifex-rl")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--unconditional", action="store_true", help="digits-diffusion/-flow: no class labels")
    sub.add_parser("list", help="list the recipes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for name in sorted(RECIPES):
            print(name)
        return 0
    if args.run_dir is None:
        args.run_dir = f"runs/{args.recipe}"
    summary = load_recipe(args.recipe)(args)
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"\nrun directory: {args.run_dir} (metrics.jsonl, summary.json, metrics.png, checkpoints/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
