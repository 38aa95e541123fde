"""Compiled whole-sequence sampling: :func:`generate`, :class:`Sampler`, :class:`GenerationOutput`.

Convenience wrappers around :mod:`artifex_rl.models.sampling` for scripts,
benchmarks and tests that want the prompt and the completion in one array:
they return ``(B, P + N)`` arrays, and run one ``jax.jit``-ted function of the
pure ``(graphdef, state)`` split, so repeated calls with the same shapes and
settings reuse one compiled program (see :func:`generate_trace_count`).
Trainers use the prompt-free :class:`~artifex_rl.rl.generation.Completions`
of a :class:`~artifex_rl.models.sampling.TokenSampler` instead.

The returned ``log_probs`` are under the sampling distribution
(``logits / temperature``, top-``k``), like every sampler's: with
``temperature=1`` and no ``top_k`` that is the model's own softmax, what
``token_log_probs(model(out.tokens), out.tokens)`` recomputes.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from artifex_rl.models.sampling import TokenSampler, kv_cache_sample, recompute_sample
from artifex_rl.rl.generation import Completions

Array = jax.Array


class GenerationOutput(NamedTuple):
    """Whole sequences; ``P`` prompt tokens, ``N`` new tokens.

    Attributes:
      tokens: ``(B, P + N)`` int32: the prompt followed by the completion;
        positions after a row's first ``eos_id`` hold ``pad_id``.
      completion_mask: ``(B, P + N)`` float32: 1 on generated tokens up to and
        including the first EOS, 0 on the prompt and after the EOS.
      log_probs: ``(B, P + N)`` float32: log-prob of each generated token under
        the sampling distribution, aligned like
        :func:`artifex_rl.rl.policies.token_log_probs`; 0 where
        ``completion_mask`` is 0.
      lengths: ``(B,)`` int32: number of completion tokens (EOS included).
    """

    tokens: Array
    completion_mask: Array
    log_probs: Array
    lengths: Array


def as_generation_output(prompts: Array, completions: Completions) -> GenerationOutput:
    """``(B, P)`` prompts + ``(B, N)`` completions -> ``(B, P + N)`` :class:`GenerationOutput`."""
    p = prompts.shape[1]
    return GenerationOutput(
        completions.full_tokens(prompts),
        completions.full_completion_mask(p),
        completions.full_log_probs(p),
        completions.lengths,
    )


def sample_with_cache(model: Any, prompts: Array, key: Array, **settings: Any) -> GenerationOutput:
    """:func:`~artifex_rl.models.sampling.kv_cache_sample` as whole sequences (a pure function)."""
    return as_generation_output(prompts, kv_cache_sample(model, prompts, key, **settings))


def sample_without_cache(model: Any, prompts: Array, key: Array, **settings: Any) -> GenerationOutput:
    """:func:`~artifex_rl.models.sampling.recompute_sample` as whole sequences (a pure function)."""
    return as_generation_output(prompts, recompute_sample(model, prompts, key, **settings))


_TRACE_COUNTS: collections.Counter[str] = collections.Counter()


def generate_trace_count(kind: Literal["cache", "no_cache"] = "cache") -> int:
    """How many times the jitted sampler of ``kind`` has been traced in this process."""
    return _TRACE_COUNTS[kind]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _generate_jit(
    graphdef: nnx.GraphDef, sampler: TokenSampler, state: nnx.State, prompts: Array, key: Array, prompt_mask: Array | None
) -> GenerationOutput:
    # Runs only while tracing: counts compilations, not calls.
    _TRACE_COUNTS["cache" if sampler.use_cache else "no_cache"] += 1
    completions = sampler(nnx.merge(graphdef, state), prompts, key, prompt_mask=prompt_mask)
    return as_generation_output(prompts, completions)


class Sampler:
    """Compiled sampler bound to a model structure and fixed sampling settings.

    Holds the ``graphdef`` so the hot loop passes only the pure ``state``
    (e.g. the trainer's current parameters); one compilation per prompt shape.

    Example::

        graphdef, state = nnx.split(model)
        sampler = Sampler(graphdef, max_new_tokens=8, eos_id=2)
        out = sampler(state, prompts, key=key)
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        pad_id: int = 0,
        use_cache: bool = True,
    ) -> None:
        self.graphdef = graphdef
        self.sampler = TokenSampler(
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            top_k=None if top_k is None else int(top_k),
            eos_id=None if eos_id is None else int(eos_id),
            pad_id=int(pad_id),
            use_cache=bool(use_cache),
        )

    @classmethod
    def from_model(cls, model: nnx.Module, **settings: Any) -> Sampler:
        """Sampler for ``model``'s structure; pass ``nnx.state(model)`` when calling."""
        return cls(nnx.graphdef(model), **settings)

    def __call__(
        self, state: nnx.State, prompts: Array, *, key: Array, prompt_mask: Array | None = None
    ) -> GenerationOutput:
        """Sample completions for ``(B, P)`` ``prompts`` with the parameters ``state``."""
        return _generate_jit(self.graphdef, self.sampler, state, jnp.asarray(prompts), key, prompt_mask)


def generate(
    model: nnx.Module,
    prompts: Array,
    max_new_tokens: int,
    *,
    key: Array,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    prompt_mask: Array | None = None,
    use_cache: bool = True,
) -> GenerationOutput:
    """Sample ``max_new_tokens`` after each ``(B, P)`` prompt, compiled (the KV cache by default).

    Sampling uses ``temperature`` (0 = greedy) and ``top_k``; the returned
    ``log_probs`` are under that same distribution (see the module
    docstring). Prompts share one length ``P``; left-pad shorter ones and
    pass ``prompt_mask``. Calls with the same shapes and settings reuse one
    compiled program.
    """
    graphdef, state = nnx.split(model)
    sampler = Sampler(
        graphdef,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        eos_id=eos_id,
        pad_id=pad_id,
        use_cache=use_cache,
    )
    return sampler(state, prompts, key=key, prompt_mask=prompt_mask)


def generate_without_cache(model: nnx.Module, prompts: Array, max_new_tokens: int, **kwargs: Any) -> GenerationOutput:
    """:func:`generate` with the cache-free sampler: the same tokens for the same key, ``O(N)``
    times more work. Use it to check and benchmark the cache, not to train."""
    return generate(model, prompts, max_new_tokens, use_cache=False, **kwargs)
