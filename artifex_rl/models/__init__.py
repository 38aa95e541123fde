"""Small reference models used by examples, tests, recipes and benchmarks."""

from artifex_rl.models.mlp import ActorCritic, MLPPolicy
from artifex_rl.models.transformer import (
    GenerationOutput,
    Sampler,
    TransformerLM,
    generate,
    generate_trace_count,
    generate_without_cache,
    sample_with_cache,
    sample_without_cache,
)

__all__ = [
    "ActorCritic",
    "GenerationOutput",
    "MLPPolicy",
    "Sampler",
    "TransformerLM",
    "generate",
    "generate_trace_count",
    "generate_without_cache",
    "sample_with_cache",
    "sample_without_cache",
]
