"""Rollout sources: environments stepped by the current policy, feeding ``Trainer.fit``."""

from artifex_rl.envs.collect import detect_actor_critic, init_carry, make_collect, make_env
from artifex_rl.envs.gymnax_rollout import GymnaxRolloutSource
from artifex_rl.envs.spaces import ActionSpec, action_spec

__all__ = [
    "ActionSpec",
    "GymnaxRolloutSource",
    "action_spec",
    "detect_actor_critic",
    "init_carry",
    "make_collect",
    "make_env",
]
