"""The ``artifex-rl`` command: ``artifex-rl train RECIPE [options]``.

Recipes (``artifex-rl list``): ``ppo`` and ``reinforce`` train on any gymnax
environment given with ``--env NAME``, starting from the defaults published
for its family (:mod:`artifex_rl.recipes.env_defaults`); ``cartpole-ppo``,
``pendulum-ppo``, ... are named shortcuts; ``lm-*`` fine-tune a tiny language
model. An option the chosen recipe does not read is an error, never silently
ignored. Every run writes into ``--run-dir``: ``config.json`` (every setting,
resolved, and the exact command under ``"command"``), ``metrics.jsonl``,
``summary.json``, the ``metrics.png`` learning curves, a checkpoint, and with
``--tensorboard`` TensorBoard event files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from artifex_rl.recipes import (
    CHAIN_RL_OPTIONS,
    DENOISING_OPTIONS,
    ENV_OPTIONS,
    LM_OPTIONS,
    PPO_OPTIONS,
    RECIPE_INFO,
    load_recipe,
)

#: Hidden-layer activations of the environment models (artifex_rl.models.mlp; a test keeps them equal).
ACTIVATIONS = ("elu", "gelu", "relu", "silu", "swish", "tanh")
_RECIPE_OPTIONS = ENV_OPTIONS | PPO_OPTIONS | LM_OPTIONS | DENOISING_OPTIONS | CHAIN_RL_OPTIONS | {"env"}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="artifex-rl",
        description="Train a ready-made recipe: artifex-rl train RECIPE [options]; artifex-rl list.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        usage="artifex-rl train RECIPE [options]",
        help="train a recipe and write config, metrics, summary, plot, checkpoint",
        description="Options a recipe does not read are refused; `artifex-rl list` shows the recipes.",
    )
    train.add_argument("recipe", choices=sorted(RECIPE_INFO), help="what to train (see `artifex-rl list`)")
    common = train.add_argument_group("every recipe")
    common.add_argument("--run-dir", default=None, help="output directory (default: runs/<recipe>)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--wandb-mode", default="disabled", choices=["online", "offline", "disabled"],
                        help="Weights & Biases mode (default: disabled; offline needs no account)")
    common.add_argument("--wandb-project", default="artifex-rl")
    common.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard event files to <run-dir>/tensorboard (needs tensorboardX)")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_argument("--compile-cache", default=None, metavar="DIR",
                        help="JAX's persistent compilation cache: a later run of the same program skips XLA "
                             "compilation ('off' disables; default $ARTIFEX_RL_COMPILE_CACHE or "
                             "~/.cache/artifex_rl/jax)")

    env = train.add_argument_group("environment recipes (ppo, reinforce, cartpole-*, pendulum-ppo)")
    env.add_argument("--env", default=None,
                     help="gymnax environment id for ppo/reinforce, e.g. Acrobot-v1, Pendulum-v1, Breakout-MinAtar")
    env.add_argument("--total-timesteps", type=int, default=None, help="environment steps (default per family)")
    env.add_argument("--num-envs", type=int, default=None, help="parallel environments")
    env.add_argument("--num-steps", type=int, default=None, help="steps per environment per iteration")
    env.add_argument("--learning-rate", type=float, default=None, help="Adam learning rate")
    env.add_argument("--anneal-lr", action=argparse.BooleanOptionalAction, default=None,
                     help="anneal the learning rate linearly to 0")
    env.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden layer widths, e.g. 64 64")
    env.add_argument("--activation", choices=ACTIVATIONS, default=None, help="hidden-layer activation")
    env.add_argument("--gamma", type=float, default=None, help="discount factor")
    env.add_argument("--entropy-coeff", type=float, default=None, help="entropy bonus weight")
    env.add_argument("--max-grad-norm", type=float, default=None, help="global gradient-norm clip")
    env.add_argument("--steps-per-execution", type=int, default=None,
                     help="iterations (rollout + update) per compiled call")
    ppo = train.add_argument_group("PPO only (ppo, cartpole-ppo, pendulum-ppo)")
    ppo.add_argument("--gae-lambda", type=float, default=None)
    ppo.add_argument("--clip-param", type=float, default=None, help="surrogate (and value) clip epsilon")
    ppo.add_argument("--vf-coeff", type=float, default=None, help="value loss weight")
    ppo.add_argument("--update-epochs", type=int, default=None, help="passes over each batch")
    ppo.add_argument("--num-minibatches", type=int, default=None, help="minibatches per pass")

    lm = train.add_argument_group("language-model and digits recipes (lm-*, digits-*)")
    lm.add_argument("--steps", type=int, default=None, help="RL steps (default per recipe)")
    lm.add_argument("--task", default=None, help="digit_sum or sort_digits")
    # default None, not False: check_options refuses any recipe-specific option that is not None.
    lm.add_argument("--unconditional", action="store_true", default=None,
                    help="digits-diffusion/digits-flow only: train without class labels (no guidance)")
    chain = train.add_argument_group("RL on a digit generative model (digits-grpo-diffusion, digits-grpo-flow, "
                                     "digits-reinforce-diffusion, digits-ppo-vae, digits-reinforce-gan, ...)")
    chain.add_argument("--target-digit", type=int, default=None, choices=range(10), metavar="D",
                       help="the digit the reward asks for (default 3)")
    chain.add_argument("--conditional", action="store_true", default=None,
                       help="fine-tune a class-conditional model without guidance (reward: P(label))")
    chain.add_argument("--base-run", default=None,
                       help="run directory of an earlier digits-diffusion/digits-flow run (digits-vae for "
                            "digits-ppo-vae, digits-gan for digits-reinforce-gan; default: train one into RUN_DIR/base)")
    train.add_argument("--log-every", type=int, default=None,
                       help="log metrics every N trainer steps (environment, language-model and digits recipes)")
    dist = train.add_argument_group(
        "several processes (hosts): run the same command on each; see docs/distributed.md")
    dist.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                      help="address of process 0 (or $ARTIFEX_COORDINATOR); the trainer then shards over every process's devices")
    dist.add_argument("--num-processes", type=int, default=None, help="processes in the run (or $ARTIFEX_NUM_PROCESSES)")
    dist.add_argument("--process-id", type=int, default=None, help="this process, 0..N-1 (or $ARTIFEX_PROCESS_ID)")
    sub.add_parser("list", help="list the recipes")
    parser.train_parser = train  # check_options reports errors with the train command's usage
    return parser


def _why_not(recipe: str, dest: str) -> str:
    """Why ``recipe`` does not read option ``dest`` (for the error message)."""
    flag = _flag(dest)
    if dest == "unconditional":
        if "unconditional" not in RECIPE_INFO[recipe].options and "conditional" in RECIPE_INFO[recipe].options:
            return f"{recipe} fine-tunes the base model of --base-run as it is (add --conditional for a conditional one)"
        if recipe.startswith("digits-"):
            return f"{recipe} trains without class labels already; only digits-diffusion and digits-flow are conditional"
        return "it trains a digits denoiser without labels (digits-diffusion and digits-flow only)"
    if recipe.startswith("digits-"):
        reads = ", ".join(_flag(d) for d in sorted(RECIPE_INFO[recipe].options))
        return f"{recipe} trains on the UCI digits; it reads {reads}"
    if dest == "env":
        algorithm = "reinforce" if "reinforce" in recipe else "ppo"
        if recipe.startswith("lm-"):
            return f"{recipe} trains a language model, not on an environment"
        return f"{recipe} always trains its own environment; use `artifex-rl train {algorithm} --env NAME`"
    if dest in CHAIN_RL_OPTIONS - LM_OPTIONS:
        return f"{flag} is an option of the RL recipes on a digit sampler (digits-grpo-*, digits-reinforce-diffusion)"
    if recipe.startswith("lm-"):
        return f"{flag} is an environment option; {recipe} reads --steps, --task and --log-every"
    if dest in PPO_OPTIONS:
        return f"{flag} is a PPO setting; REINFORCE has no value function, epochs or minibatches"
    return f"{flag} is a language-model option"


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options ``args.recipe`` does not read, and ``ppo``/``reinforce`` without ``--env``."""
    parser = getattr(parser, "train_parser", parser)
    info = RECIPE_INFO[args.recipe]
    for dest in sorted(_RECIPE_OPTIONS):
        if getattr(args, dest, None) is not None and dest not in info.options:
            parser.error(
                f"option {_flag(dest)} is not used by recipe {args.recipe!r}: {_why_not(args.recipe, dest)}"
            )
    if "env" in info.options:
        if args.env is None:
            parser.error(
                f"recipe {args.recipe!r} needs --env NAME, a gymnax environment id "
                "(e.g. CartPole-v1, Acrobot-v1, Pendulum-v1, Breakout-MinAtar)"
            )
        import gymnax

        if args.env not in gymnax.registered_envs:
            parser.error(f"--env {args.env!r} is not a gymnax environment; expected one of "
                         f"{', '.join(gymnax.registered_envs)}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        width = max(map(len, RECIPE_INFO))
        for name, info in sorted(RECIPE_INFO.items()):
            print(f"{name:<{width}}  {info.description}")
        return 0
    from artifex_rl.distributed.runtime import initialize, is_main_process
    from artifex_rl.recipes.compile_cache import enable_compile_cache

    enable_compile_cache(args.compile_cache)  # before anything compiles

    # Before anything starts JAX's backend (checking --env reads gymnax): no-op without a coordinator.
    initialize(args.coordinator, args.num_processes, args.process_id)
    check_options(parser, args)
    args.argv = ["artifex-rl", *argv]
    args.env_overrides = {
        dest: tuple(value) if dest == "hidden" else value
        for dest in sorted(ENV_OPTIONS | PPO_OPTIONS)
        if (value := getattr(args, dest)) is not None
    }
    if args.run_dir is None:
        args.run_dir = f"runs/{args.recipe}"
    summary = load_recipe(args.recipe)(args)
    if not is_main_process():
        return 0
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"\nrun directory: {args.run_dir} (config.json, metrics.jsonl, summary.json, metrics.png, checkpoints/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
