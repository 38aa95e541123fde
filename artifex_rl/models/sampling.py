"""Token samplers for any causal LM: a KV-cache sampler and a cache-free one, same outputs.

:class:`TokenSampler` implements :class:`artifex_rl.rl.generation.SampleFn`:

* a model with the :class:`DecoderLM` methods (``init_cache``, ``prefill``,
  ``decode_step``, as :class:`~artifex_rl.models.transformer.TransformerLM`
  has) is sampled with :func:`kv_cache_sample`: one prefill pass over the
  prompt, then ``lax.scan`` over single-token decode steps;
* any other model, only ``model(tokens (B, T)) -> logits (B, T, V)``, is
  sampled with :func:`recompute_sample`: a full causal forward over a fixed
  ``(B, P + N)`` buffer per new token. ``O(N)`` times the work of the cache,
  so slower for long completions, but it needs nothing of the model beyond
  causality (position ``t``'s logits may depend only on tokens ``<= t``).

Both draw new token ``i`` (0-based) with ``fold_in(key, i)`` from
:func:`~artifex_rl.rl.generation.sampling_logits` (``logits / temperature``,
top-``k``), and return log-probs under that same distribution, so for the
same key and model they emit the same tokens and log-probs (up to float
round-off between the cached and the recomputed logits). ``temperature=0``
is greedy decoding; its log-probs are then the model's own (temperature 1).

Padding: prompts share one length ``P``; shorter ones are left-padded and
``prompt_mask`` (1 = real token) is passed to the model as a key mask over
``P + N`` slots (``concat(prompt_mask, ones)``). How positions follow from it is
the model's business (``TransformerLM`` counts real tokens, so a left-padded
prompt is read like the unpadded one); a model whose ``__call__`` takes no
``mask`` can only sample unpadded prompts.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from artifex_rl.rl.generation import Completions, forward, sampling_logits

Array = jax.Array


@runtime_checkable
class DecoderLM(Protocol):
    """A causal LM that the KV-cache sampler can drive; all methods public and jittable.

    Attributes:
      vocab_size: number of token ids ``V``.
      max_len: longest sequence (prompt + completion) the model handles.

    Slots and masks: the cache has ``L`` slots, one per sequence position;
    ``mask`` is an optional ``(B, L)`` key mask over all slots (1 = real
    token, 0 = padding), the same array at every call of one generation.
    """

    vocab_size: int
    max_len: int

    def __call__(self, tokens: Array, *, mask: Array | None = None) -> Array:
        """``(B, T)`` tokens (and optional ``(B, T)`` mask) -> ``(B, T, V)`` next-token logits."""
        ...

    def init_cache(self, batch_size: int, cache_len: int) -> Any:
        """An empty cache (any pytree) of ``cache_len`` slots for ``batch_size`` rows."""
        ...

    def prefill(self, tokens: Array, cache: Any, *, mask: Array | None = None) -> tuple[Array, Any]:
        """Write ``(B, P)`` prompt tokens to slots ``[0, P)``; return the ``(B, V)`` logits of
        the last prompt position (the first new token's distribution) and the cache."""
        ...

    def decode_step(
        self, token: Array, index: Array | int, cache: Any, *, mask: Array | None = None
    ) -> tuple[Array, Any]:
        """Write the ``(B,)`` tokens at slot ``index`` (a traced scalar), attending to slots
        ``<= index``; return the ``(B, V)`` logits of the next token and the cache."""
        ...


def supports_kv_cache(model: Any) -> bool:
    """Whether ``model`` has every :class:`DecoderLM` attribute (so :func:`kv_cache_sample` can run it)."""
    return isinstance(model, DecoderLM)


def check_sampling_args(
    prompts: Array,
    prompt_mask: Array | None,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    eos_id: int | None,
    pad_id: int,
    vocab_size: int | None = None,
    max_len: int | None = None,
) -> None:
    """The samplers' input checks (``vocab_size``/``max_len``: the model's, when it has them)."""
    if jnp.ndim(prompts) != 2:
        raise ValueError(f"prompts must be (B, P), got shape {jnp.shape(prompts)}")
    if not jnp.issubdtype(jnp.result_type(prompts), jnp.integer):
        raise ValueError(f"prompts must hold integer token ids, got dtype {jnp.result_type(prompts)}")
    b, p = prompts.shape
    if p < 1:
        raise ValueError(f"prompts must hold at least one token, got shape {prompts.shape}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if max_len is not None and p + max_new_tokens > max_len:
        raise ValueError(
            f"prompts of shape {prompts.shape} plus max_new_tokens={max_new_tokens} need "
            f"{p + max_new_tokens} positions but the model's max_len is {max_len}"
        )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (top_k < 1 or (vocab_size is not None and top_k > vocab_size)):
        raise ValueError(f"top_k must be in [1, vocab_size={vocab_size}], got {top_k}")
    for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
        if value is not None and (value < 0 or (vocab_size is not None and value >= vocab_size)):
            raise ValueError(f"{name} must be in [0, vocab_size={vocab_size}), got {value}")
    if prompt_mask is not None and jnp.shape(prompt_mask) != (b, p):
        raise ValueError(f"prompt_mask must have shape {(b, p)} like the prompts, got {jnp.shape(prompt_mask)}")


def _emit(
    logits: Array,
    step: Array | int,
    key: Array,
    done: Array,
    *,
    temperature: float,
    top_k: int | None,
    eos_id: int | None,
    pad_id: int,
) -> tuple[Array, Array, Array, Array]:
    """Draw new token number ``step`` from ``(B, V)`` logits; shared by both samplers.

    Returns ``(token, log-prob, active, done)``, each ``(B,)``: rows that
    already emitted EOS get ``pad_id``, log-prob 0 and ``active = False``.
    """
    if temperature == 0.0:  # greedy: top_k changes nothing
        sampled = jnp.argmax(logits, axis=-1)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    else:
        scaled = sampling_logits(logits, temperature, top_k)
        sampled = jax.random.categorical(jax.random.fold_in(key, step), scaled)
        log_probs = jax.nn.log_softmax(scaled, axis=-1)
    sampled = sampled.astype(jnp.int32)
    logp = jnp.take_along_axis(log_probs, sampled[:, None], axis=-1)[:, 0]
    active = ~done
    token = jnp.where(active, sampled, pad_id)
    logp = jnp.where(active, logp, 0.0)
    if eos_id is not None:
        done = done | (active & (sampled == eos_id))
    return token, logp, active, done


def _completions(tokens: Array, log_probs: Array, active: Array) -> Completions:
    """Per-step ``(N, B)`` outputs as ``(B, N)`` :class:`Completions`."""
    return Completions(tokens.T, active.T.astype(jnp.float32), log_probs.T)


def _key_mask(prompt_mask: Array | None, max_new_tokens: int) -> Array | None:
    """``(B, P + N)``: the prompt mask, then ones for the new tokens."""
    if prompt_mask is None:
        return None
    b = prompt_mask.shape[0]
    return jnp.concatenate([prompt_mask.astype(jnp.int32), jnp.ones((b, max_new_tokens), jnp.int32)], axis=1)


def kv_cache_sample(
    model: DecoderLM,
    prompts: Array,
    key: Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    prompt_mask: Array | None = None,
) -> Completions:
    """Sample ``max_new_tokens`` after each ``(B, P)`` prompt with the model's KV cache.

    A pure function (call it inside your own ``jit``): ``prefill`` over the
    prompt, then ``lax.scan`` over the remaining ``N - 1`` positions, one
    ``decode_step`` each. See the module docstring for the key schedule,
    the distribution and padding.
    """
    if not supports_kv_cache(model):
        missing = [name for name in ("vocab_size", "max_len", "init_cache", "prefill", "decode_step")
                   if not hasattr(model, name)]
        raise TypeError(
            f"kv_cache_sample needs a DecoderLM; {type(model).__name__} lacks {missing}. "
            "Use recompute_sample (or TokenSampler, which picks it) for a plain model(tokens) -> logits"
        )
    check_sampling_args(
        prompts, prompt_mask, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
        eos_id=eos_id, pad_id=pad_id, vocab_size=model.vocab_size, max_len=model.max_len,
    )
    b, p = prompts.shape
    mask = _key_mask(prompt_mask, max_new_tokens)
    emit = functools.partial(_emit, key=key, temperature=temperature, top_k=top_k, eos_id=eos_id, pad_id=pad_id)
    logits, cache = model.prefill(prompts, model.init_cache(b, p + max_new_tokens), mask=mask)
    first, first_logp, first_active, done = emit(logits, 0, done=jnp.zeros((b,), bool))

    def step(carry, i):
        cache, prev, done = carry
        # The previous token sits in slot P + i - 1 and predicts token i.
        logits, cache = model.decode_step(prev, p + i - 1, cache, mask=mask)
        token, logp, active, done = emit(logits, i, done=done)
        return (cache, token, done), (token, logp, active)

    _, (tokens, logps, actives) = jax.lax.scan(step, (cache, first, done), jnp.arange(1, max_new_tokens))
    return _completions(
        jnp.concatenate([first[None], tokens]),
        jnp.concatenate([first_logp[None], logps]),
        jnp.concatenate([first_active[None], actives]),
    )


def recompute_sample(
    model: Any,
    prompts: Array,
    key: Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    prompt_mask: Array | None = None,
) -> Completions:
    """Cache-free sampling for any causal ``model(tokens) -> logits``: one full forward per new token.

    Same arguments, key schedule and outputs as :func:`kv_cache_sample`. The
    ``(B, P + N)`` buffer never changes shape: slots not generated yet hold
    ``pad_id`` and causality keeps them from influencing the position being
    sampled. ``prompt_mask`` needs a model whose ``__call__`` takes ``mask=``.
    """
    check_sampling_args(
        prompts, prompt_mask, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
        eos_id=eos_id, pad_id=pad_id,
        vocab_size=getattr(model, "vocab_size", None), max_len=getattr(model, "max_len", None),
    )
    b, p = prompts.shape
    mask = _key_mask(prompt_mask, max_new_tokens)
    emit = functools.partial(_emit, key=key, temperature=temperature, top_k=top_k, eos_id=eos_id, pad_id=pad_id)
    buffer = jnp.concatenate(
        [prompts.astype(jnp.int32), jnp.full((b, max_new_tokens), pad_id, jnp.int32)], axis=1
    )

    def step(carry, i):
        buffer, done = carry
        logits = forward(model, buffer, mask)
        if logits.shape[:2] != buffer.shape:
            raise ValueError(
                f"model(tokens {buffer.shape}) returned logits of shape {logits.shape}, expected (B, T, V) "
                f"with (B, T) = {buffer.shape}"
            )
        last = jax.lax.dynamic_index_in_dim(logits, p + i - 1, axis=1, keepdims=False)
        token, logp, active, done = emit(last, i, done=done)
        buffer = jax.lax.dynamic_update_slice(buffer, token[:, None], (0, p + i))
        return (buffer, done), (token, logp, active)

    _, (tokens, logps, actives) = jax.lax.scan(step, (buffer, jnp.zeros((b,), bool)), jnp.arange(max_new_tokens))
    return _completions(tokens, logps, actives)


@dataclasses.dataclass(frozen=True)
class TokenSampler:
    """A :class:`~artifex_rl.rl.generation.SampleFn` with fixed sampling settings (hashable: a
    valid ``jit`` static argument).

    Attributes:
      max_new_tokens: ``N``, new tokens per prompt.
      temperature: ``> 0`` samples ``softmax(logits / T)``; ``0`` is greedy.
      top_k: sample among the ``k`` most likely tokens; ``None``: all.
      eos_id: end-of-sequence id (tokens after it are ``pad_id``, masked); ``None``: none.
      pad_id: the id written after EOS.
      use_cache: ``None`` (default): the KV cache when the model is a
        :class:`DecoderLM`, otherwise recompute; ``True``/``False`` forces one.

    Example::

        sampler = TokenSampler(max_new_tokens=8, eos_id=2)
        completions = jax.jit(sampler)(model, prompts, key)   # Completions, (B, 8) each
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    eos_id: int | None = None
    pad_id: int = 0
    use_cache: bool | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")

    def __call__(self, model: Any, prompts: Array, key: Array, *, prompt_mask: Array | None = None) -> Completions:
        use_cache = supports_kv_cache(model) if self.use_cache is None else self.use_cache
        sample = kv_cache_sample if use_cache else recompute_sample
        return sample(
            model,
            prompts,
            key,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            prompt_mask=prompt_mask,
        )
