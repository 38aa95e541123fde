"""Ready-made training runs behind ``artifex-rl train NAME``.

A recipe is a function ``run(args: argparse.Namespace) -> dict`` that builds a
model, a trainer and a data source, fits, and writes its run directory (see
:mod:`artifex_rl.recipes.common`). Recipes are imported lazily so that the CLI
starts fast and an environment recipe does not import the language-model code.

:data:`RECIPE_INFO` says, for each recipe, what it trains and which
command-line options it reads; the CLI refuses any other option rather than
ignore it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

#: Options every recipe reads (the run directory, the seed, the loggers).
COMMON_OPTIONS = frozenset({
    "run_dir", "seed", "wandb_mode", "wandb_project", "no_progress", "tensorboard", "compile_cache",
    "coordinator", "num_processes", "process_id",  # several processes (artifex_rl.distributed)
})

#: Options of PPO and REINFORCE on an environment (the keys are the settings they set).
ENV_OPTIONS = frozenset({
    "total_timesteps", "num_envs", "num_steps", "learning_rate", "anneal_lr", "hidden", "activation",
    "gamma", "entropy_coeff", "max_grad_norm", "log_every", "steps_per_execution",
})
#: Options only PPO reads.
PPO_OPTIONS = frozenset({"gae_lambda", "clip_param", "vf_coeff", "update_epochs", "num_minibatches"})
#: Options of the language-model recipes.
LM_OPTIONS = frozenset({"steps", "task", "log_every"})
#: Options of the digits generative recipes.
DIGITS_OPTIONS = frozenset({"steps", "log_every"})
#: Options of the RL recipes on a digit sampler's chain (digits-grpo-*, digits-reinforce-diffusion).
CHAIN_RL_OPTIONS = frozenset({"steps", "log_every", "target_digit", "conditional", "base_run"})
#: Options of the RL recipes on a VAE's latents and a GAN's generator.
LATENT_RL_OPTIONS = frozenset({"steps", "log_every", "base_run"})
#: The diffusion and flow recipes also train unconditional models.
DENOISING_OPTIONS = DIGITS_OPTIONS | {"unconditional"}


@dataclasses.dataclass(frozen=True)
class RecipeInfo:
    """A recipe: ``target`` (``"module:function"``), a one-line description, the options it reads."""

    target: str
    description: str
    options: frozenset[str]


RECIPE_INFO: dict[str, RecipeInfo] = {
    "ppo": RecipeInfo(
        "artifex_rl.recipes.env_runs:run_ppo_env",
        "PPO on any gymnax environment (--env NAME), with the environment family's published defaults",
        ENV_OPTIONS | PPO_OPTIONS | {"env"},
    ),
    "reinforce": RecipeInfo(
        "artifex_rl.recipes.env_runs:run_reinforce_env",
        "REINFORCE on any gymnax environment (--env NAME)",
        ENV_OPTIONS | {"env"},
    ),
    "cartpole-ppo": RecipeInfo(
        "artifex_rl.recipes.cartpole:run_ppo", "PPO on CartPole-v1 (= ppo --env CartPole-v1)",
        ENV_OPTIONS | PPO_OPTIONS,
    ),
    "cartpole-reinforce": RecipeInfo(
        "artifex_rl.recipes.cartpole:run_reinforce", "REINFORCE on CartPole-v1 (= reinforce --env CartPole-v1)",
        ENV_OPTIONS,
    ),
    "pendulum-ppo": RecipeInfo(
        "artifex_rl.recipes.cartpole:run_pendulum_ppo",
        "PPO with a Gaussian policy on Pendulum-v1 (this repository's preset)",
        ENV_OPTIONS | PPO_OPTIONS,
    ),
    "lm-grpo": RecipeInfo(
        "artifex_rl.recipes.lm:run_grpo",
        "pre-train a tiny LM on a digit task, then online GRPO", LM_OPTIONS,
    ),
    "lm-ppo": RecipeInfo(
        "artifex_rl.recipes.lm:run_ppo",
        "pre-train a tiny LM on a digit task, then online PPO with a value head (the RLHF loop)", LM_OPTIONS,
    ),
    "lm-dpo": RecipeInfo(
        "artifex_rl.recipes.lm:run_dpo",
        "pre-train a tiny LM on a digit task, then DPO on its own preference pairs", LM_OPTIONS,
    ),
    "lm-reinforce": RecipeInfo(
        "artifex_rl.recipes.lm:run_reinforce",
        "pre-train a tiny LM on a digit task, then REINFORCE on fresh completions", LM_OPTIONS,
    ),
    "digits-vae": RecipeInfo(
        "artifex_rl.recipes.digits.gan:run_vae", "a VAE on the UCI digits (samples, cFD)", DIGITS_OPTIONS,
    ),
    "digits-gan": RecipeInfo(
        "artifex_rl.recipes.digits.gan:run_gan", "a GAN on the UCI digits (two models, two optimizers)", DIGITS_OPTIONS,
    ),
    "digits-ebm": RecipeInfo(
        "artifex_rl.recipes.digits.gan:run_ebm", "an energy-based model on the UCI digits (Langevin, replay buffer)",
        DIGITS_OPTIONS,
    ),
    "digits-diffusion": RecipeInfo(
        "artifex_rl.recipes.digits.diffusion:run_diffusion",
        "a class-conditional diffusion model on the UCI digits (CFG; --unconditional)", DENOISING_OPTIONS,
    ),
    "digits-flow": RecipeInfo(
        "artifex_rl.recipes.digits.diffusion:run_flow",
        "a class-conditional rectified-flow model on the UCI digits (CFG; --unconditional)", DENOISING_OPTIONS,
    ),
    "digits-grpo-diffusion": RecipeInfo(
        "artifex_rl.recipes.digits.rl:run_grpo_diffusion",
        "GRPO on a digit diffusion model's DDIM chain: draw --target-digit (DDPO; --conditional)", CHAIN_RL_OPTIONS,
    ),
    "digits-grpo-flow": RecipeInfo(
        "artifex_rl.recipes.digits.rl:run_grpo_flow",
        "GRPO on a digit flow model's SDE chain: draw --target-digit (Flow-GRPO; --conditional)", CHAIN_RL_OPTIONS,
    ),
    "digits-ppo-diffusion": RecipeInfo(
        "artifex_rl.recipes.digits.rl:run_ppo_diffusion",
        "PPO on a digit diffusion model's DDIM chain (DDPO's importance-sampling variant, no critic)",
        CHAIN_RL_OPTIONS,
    ),
    "digits-dpo-diffusion": RecipeInfo(
        "artifex_rl.recipes.digits.rl:run_dpo_diffusion",
        "Diffusion-DPO on a digit diffusion model: pairs ranked by P(--target-digit) from its own samples",
        CHAIN_RL_OPTIONS,
    ),
    "digits-reinforce-diffusion": RecipeInfo(
        "artifex_rl.recipes.digits.rl:run_reinforce_diffusion",
        "REINFORCE on a digit diffusion model's DDIM chain (DDPO's score-function estimator)", CHAIN_RL_OPTIONS,
    ),
    "digits-ppo-vae": RecipeInfo(
        "artifex_rl.recipes.digits.latent_rl:run_ppo_vae",
        "PPO on a digit VAE's latents: the encoder is the policy, the decoder the environment, reward "
        "P(input's label | decoded) - reconstruction error", LATENT_RL_OPTIONS,
    ),
    "digits-reinforce-gan": RecipeInfo(
        "artifex_rl.recipes.digits.latent_rl:run_reinforce_gan",
        "REINFORCE on a digit GAN's generator (Gaussian around its output), ORGAN reward "
        "lam D + (1 - lam) P(--target-digit)", LATENT_RL_OPTIONS | {"target_digit"},
    ),
}

#: ``name -> "module:function"`` (kept for code that reads the registry this way).
RECIPES: dict[str, str] = {name: info.target for name, info in RECIPE_INFO.items()}


def load_recipe(name: str) -> Callable[[Any], dict]:
    """The recipe function registered as ``name``."""
    try:
        target = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}") from None
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)
