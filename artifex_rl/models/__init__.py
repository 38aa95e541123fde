"""Small reference models used by examples, tests, recipes and benchmarks, and the token samplers."""

from artifex_rl.models.generate import (
    GenerationOutput,
    Sampler,
    generate,
    generate_trace_count,
    generate_without_cache,
    sample_with_cache,
    sample_without_cache,
)
from artifex_rl.models.mlp import ActorCritic, MLPPolicy
from artifex_rl.models.sampling import DecoderLM, TokenSampler, kv_cache_sample, recompute_sample
from artifex_rl.models.transformer import TransformerLM

__all__ = [
    "ActorCritic",
    "DecoderLM",
    "GenerationOutput",
    "MLPPolicy",
    "Sampler",
    "TokenSampler",
    "TransformerLM",
    "generate",
    "generate_trace_count",
    "generate_without_cache",
    "kv_cache_sample",
    "recompute_sample",
    "sample_with_cache",
    "sample_without_cache",
]
