"""Ready-made training runs behind ``artifex-rl train NAME``.

A recipe is a function ``run(args: argparse.Namespace) -> dict`` that builds a
model, a trainer and a data source, fits, and writes its run directory (see
:mod:`artifex_rl.recipes.common`). Recipes are imported lazily so that the CLI
starts fast and an environment recipe does not import the language-model code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

RECIPES: dict[str, str] = {
    "cartpole-ppo": "artifex_rl.recipes.cartpole:run_ppo",
    "cartpole-reinforce": "artifex_rl.recipes.cartpole:run_reinforce",
    "pendulum-ppo": "artifex_rl.recipes.cartpole:run_pendulum_ppo",
    "lm-grpo": "artifex_rl.recipes.lm:run_grpo",
    "lm-dpo": "artifex_rl.recipes.lm:run_dpo",
    "lm-reinforce": "artifex_rl.recipes.lm:run_reinforce",
    "digits-diffusion": "artifex_rl.recipes.digits.diffusion:run_diffusion",
    "digits-flow": "artifex_rl.recipes.digits.diffusion:run_flow",
}


def load_recipe(name: str) -> Callable[[Any], dict]:
    """The recipe function registered as ``name``."""
    try:
        target = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}") from None
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)
