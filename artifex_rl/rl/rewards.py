"""Re-export of :mod:`artifex_rl.rewards` (the reward protocol and combinators moved there)."""

from artifex_rl.rewards import (
    ClippedReward,
    CompositeReward,
    ConstantReward,
    RewardFunction,
    ScaledReward,
    ThresholdReward,
    batch_size_of,
    validate_rewards,
)

__all__ = [
    "ClippedReward",
    "CompositeReward",
    "ConstantReward",
    "RewardFunction",
    "ScaledReward",
    "ThresholdReward",
    "batch_size_of",
    "validate_rewards",
]
