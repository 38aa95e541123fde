"""The RL trainers, their configs, policy heads, rewards and maths utilities."""

from artifex_rl.rl.configs import DPOConfig, GRPOConfig, PPOConfig, REINFORCEConfig
from artifex_rl.rl.dpo import DPOTrainer
from artifex_rl.rl.grpo import GRPOTrainer
from artifex_rl.rl.policies import CategoricalPolicy, GaussianPolicy, PolicyHead, TokenPolicy
from artifex_rl.rl.ppo import PPOTrainer
from artifex_rl.rl.reinforce import REINFORCETrainer
from artifex_rl.rl.rewards import (
    ClippedReward,
    CompositeReward,
    ConstantReward,
    RewardFunction,
    ScaledReward,
    ThresholdReward,
)

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
