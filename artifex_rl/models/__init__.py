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

# 8x8 image models (digits): denoisers, VAE, GAN, energy net and the evaluation classifier.
from artifex_rl.models.classifier import DigitClassifier  # noqa: E402
from artifex_rl.models.energy import EnergyMLP  # noqa: E402
from artifex_rl.models.gan import Discriminator, Generator  # noqa: E402
from artifex_rl.models.mixer import DenoiserMixer  # noqa: E402
from artifex_rl.models.unet import DenoiserUNet  # noqa: E402
from artifex_rl.models.vae import ConvDecoder, ConvEncoder  # noqa: E402

__all__ += [
    "ConvDecoder",
    "ConvEncoder",
    "DenoiserMixer",
    "DenoiserUNet",
    "DigitClassifier",
    "Discriminator",
    "EnergyMLP",
    "Generator",
]
