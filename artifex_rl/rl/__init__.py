"""The RL trainers, their configs, and re-exports of the policy heads and rewards.

Names are resolved lazily (PEP 562), so importing a low layer under this
package (``artifex_rl.rl.losses``, ``artifex_rl.rl.configs``) does not import
the trainers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
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
}

__all__ = [
    "CategoricalPolicy",
    "ClippedReward",
    "CompositeReward",
    "ConstantReward",
    "DPOConfig",
    "DPOTrainer",
    "GRPOConfig",
    "GRPOTrainer",
    "GaussianPolicy",
    "PPOConfig",
    "PPOTrainer",
    "PolicyHead",
    "REINFORCEConfig",
    "REINFORCETrainer",
    "RewardFunction",
    "ScaledReward",
    "ThresholdReward",
    "TokenPolicy",
]

if TYPE_CHECKING:
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
