"""artifex_rl: a Lightning-style trainer framework for JAX + Flax NNX with RL trainers.

Everything public is re-exported here; see ``docs/architecture.md`` for where it lives.
"""

from artifex_rl.autoregressive import AutoregressiveTrainer
from artifex_rl.callbacks import Callback
from artifex_rl.config import TrainerConfig
from artifex_rl.rl import (
    CategoricalPolicy,
    ClippedReward,
    CompositeReward,
    ConstantReward,
    DPOConfig,
    DPOTrainer,
    GaussianPolicy,
    GRPOConfig,
    GRPOTrainer,
    PolicyHead,
    PPOConfig,
    PPOTrainer,
    REINFORCEConfig,
    REINFORCETrainer,
    RewardFunction,
    ScaledReward,
    ThresholdReward,
    TokenPolicy,
)
from artifex_rl.core.loss_terms import LossTerm
from artifex_rl.core.snapshot import PolicySnapshot
from artifex_rl.core.update import UpdatePhase
from artifex_rl.trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "AutoregressiveTrainer",
    "Callback",
    "CategoricalPolicy",
    "ClippedReward",
    "CompositeReward",
    "ConstantReward",
    "DPOConfig",
    "DPOTrainer",
    "GRPOConfig",
    "GRPOTrainer",
    "GaussianPolicy",
    "LossTerm",
    "PolicySnapshot",
    "UpdatePhase",
    "PPOConfig",
    "PPOTrainer",
    "PolicyHead",
    "REINFORCEConfig",
    "REINFORCETrainer",
    "RewardFunction",
    "ScaledReward",
    "ThresholdReward",
    "TokenPolicy",
    "Trainer",
    "TrainerConfig",
    "__version__",
]
