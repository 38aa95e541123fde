"""artifex_rl: a Lightning-style trainer framework for JAX + Flax NNX with RL trainers.

Everything public is re-exported here; see ``docs/architecture.md`` for where it
lives. Names are resolved lazily (PEP 562): ``import artifex_rl.tasks`` or
``import artifex_rl.distributions`` loads those layers without the trainers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from artifex_rl.generative import _EXPORTS as _GENERATIVE_EXPORTS  # a name table only: imports no trainer

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AutoregressiveTrainer": "artifex_rl.autoregressive",
    "Callback": "artifex_rl.callbacks",
    "TrainerConfig": "artifex_rl.config",
    "CategoricalPolicy": "artifex_rl.distributions",
    "GaussianPolicy": "artifex_rl.distributions",
    "PolicyHead": "artifex_rl.distributions",
    "TokenPolicy": "artifex_rl.distributions",
    "ClippedReward": "artifex_rl.rewards",
    "CompositeReward": "artifex_rl.rewards",
    "ConstantReward": "artifex_rl.rewards",
    "RewardFunction": "artifex_rl.rewards",
    "ScaledReward": "artifex_rl.rewards",
    "ThresholdReward": "artifex_rl.rewards",
    "DPOConfig": "artifex_rl.rl.configs",
    "GRPOConfig": "artifex_rl.rl.configs",
    "PPOConfig": "artifex_rl.rl.configs",
    "REINFORCEConfig": "artifex_rl.rl.configs",
    "DPOTrainer": "artifex_rl.rl.dpo",
    "GRPOTrainer": "artifex_rl.rl.grpo",
    "PPOTrainer": "artifex_rl.rl.ppo",
    "REINFORCETrainer": "artifex_rl.rl.reinforce",
    "Trainer": "artifex_rl.trainer",
    # The generative names (trainers, chain policy, image rewards): one table, artifex_rl.generative's.
    **_GENERATIVE_EXPORTS,
    "LossTerm": "artifex_rl.core.loss_terms",
    "PolicySnapshot": "artifex_rl.core.snapshot",
    "UpdatePhase": "artifex_rl.core.update",
}

__all__ = [
    "AutoregressiveTrainer",
    "Callback",
    "CategoricalPolicy",
    "ClippedReward",
    "CompositeReward",
    "ConstantReward",
    "DPOConfig",
    "DPOTrainer",
    "DenoisingChainPolicy",
    "DenoisingLikelihood",
    "DiffusionTrainer",
    "DigitClassifierReward",
    "EnergyTrainer",
    "FlowTrainer",
    "GANTrainer",
    "GRPOConfig",
    "GRPOTrainer",
    "GaussianPolicy",
    "InkReward",
    "LossTerm",
    "PPOConfig",
    "PPOTrainer",
    "PolicyHead",
    "PolicySnapshot",
    "REINFORCEConfig",
    "REINFORCETrainer",
    "RewardFunction",
    "ScaledReward",
    "SmoothnessReward",
    "ThresholdReward",
    "TokenPolicy",
    "Trainer",
    "TrainerConfig",
    "UpdatePhase",
    "VAETrainer",
    "__version__",
]

if TYPE_CHECKING:
    from artifex_rl.autoregressive import AutoregressiveTrainer
    from artifex_rl.callbacks import Callback
    from artifex_rl.config import TrainerConfig
    from artifex_rl.distributions import CategoricalPolicy, GaussianPolicy, PolicyHead, TokenPolicy
    from artifex_rl.rewards import (
        ClippedReward,
        CompositeReward,
        ConstantReward,
        RewardFunction,
        ScaledReward,
        ThresholdReward,
    )
    from artifex_rl.rl.configs import DPOConfig, GRPOConfig, PPOConfig, REINFORCEConfig
    from artifex_rl.rl.dpo import DPOTrainer
    from artifex_rl.rl.grpo import GRPOTrainer
    from artifex_rl.rl.ppo import PPOTrainer
    from artifex_rl.rl.reinforce import REINFORCETrainer
    from artifex_rl.trainer import Trainer


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
