"""Small reference models used by examples, tests and benchmarks."""

from artifex_rl.models.mlp import ActorCritic, MLPPolicy

__all__ = ["ActorCritic", "MLPPolicy"]
