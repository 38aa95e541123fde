"""A tiny causal transformer language model and its compiled samplers.

The model is small on purpose: it is the policy of the verifiable text tasks in
:mod:`artifex_rl.tasks` and the model the RL trainers' learning tests fine-tune.
Two things matter more than its size:

* **Sampling is compiled and cached.** :func:`generate` (and :class:`Sampler`)
  run one ``jax.jit``-ted function of the pure ``(graphdef, state)`` split: a
  prefill pass over the prompt fills a per-layer KV cache of shape
  ``(B, H, P + N, Dh)``, then ``lax.scan`` emits one token per step, writing
  the new key/value with ``lax.dynamic_update_slice``. Repeated calls with the
  same shapes and settings reuse the compiled program (see
  :func:`generate_trace_count`).
* **Returned log-probs are the policy's.** Sampling may use ``temperature`` and
  ``top_k``, but ``GenerationOutput.log_probs`` holds the log-probability of
  each sampled token under the model's *plain* softmax (temperature 1, no
  top-k), i.e. exactly what a trainer recomputes with
  ``token_log_probs(model(tokens), tokens)``. That is what importance ratios
  need: the first GRPO/PPO ratio of a fresh rollout is 1.

:func:`generate_without_cache` is the reference: it recomputes the full causal
forward over a fixed-size buffer at every step, with the same key schedule
(``fold_in(key, step)``), so for the same key it emits the same tokens as the
KV-cache sampler. Tests and ``bench/sampler_speed.py`` compare the two.

Conventions:

* Positions are array indices: token ``t`` of a row gets position embedding
  ``t``, padded or not.
* ``mask`` / ``prompt_mask`` mark real tokens (1) versus padding (0) *as keys*:
  no position attends to a padding key except itself (so a padding row never
  sees an all-masked softmax). With left-padded prompts, the log-probs a
  trainer recomputes match the sampler's only if it passes the same mask:
  ``model(out.tokens, mask=concat([prompt_mask, ones(B, N)], axis=1))``. With
  equal-length prompts (``prompt_mask=None``) plain ``model(out.tokens)``
  matches.
"""

from __future__ import annotations

import collections
import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

# One (key, value) pair per layer, each (B, H, L, Dh).
KVCache = tuple[tuple[Array, Array], ...]

# Finite instead of -inf: masked scores then vanish under softmax without any
# chance of inf - inf = NaN.
_MASKED_SCORE = -1e30


class GenerationOutput(NamedTuple):
    """What the samplers return; ``P`` prompt tokens, ``N`` new tokens.

    Attributes:
      tokens: ``(B, P + N)`` int32: the prompt followed by the completion;
        positions after a row's first ``eos_id`` hold ``pad_id``.
      completion_mask: ``(B, P + N)`` float32: 1 on generated tokens up to and
        including the first EOS, 0 on the prompt and after the EOS.
      log_probs: ``(B, P + N)`` float32: log-prob of each generated token under
        the policy (plain softmax of the logits, temperature 1, no top-k),
        aligned like :func:`artifex_rl.rl.policies.token_log_probs`; 0 where
        ``completion_mask`` is 0.
      lengths: ``(B,)`` int32: number of completion tokens (EOS included).
    """

    tokens: Array
    completion_mask: Array
    log_probs: Array
    lengths: Array


def _allowed(q_pos: Array, k_pos: Array, key_mask: Array | None) -> Array:
    """Which keys each query may attend to: ``(B or 1, 1, Tq, Tk)`` bool.

    Causal (key position <= query position), minus padding keys; a position
    always sees itself, so a padding query has one key rather than none.
    """
    causal = k_pos[None, :] <= q_pos[:, None]
    if key_mask is None:
        return causal[None, None]
    diagonal = k_pos[None, :] == q_pos[:, None]
    real = key_mask.astype(bool)[:, None, None, :]
    return causal[None, None] & (real | diagonal[None, None])


class Block(nnx.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        mlp_ratio: int,
        norm: Literal["layernorm", "rmsnorm"],
        *,
        rngs: nnx.Rngs,
    ) -> None:
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.norm1 = _make_norm(norm, d_model, rngs)
        # One fused projection: a single (d, 3d) matmul instead of three (d, d).
        self.qkv = nnx.Linear(d_model, 3 * d_model, rngs=rngs)
        self.out = nnx.Linear(d_model, d_model, rngs=rngs)
        self.norm2 = _make_norm(norm, d_model, rngs)
        self.up = nnx.Linear(d_model, mlp_ratio * d_model, rngs=rngs)
        self.down = nnx.Linear(mlp_ratio * d_model, d_model, rngs=rngs)

    def __call__(
        self,
        x: Array,
        allowed: Array,
        kv_cache: tuple[Array, Array] | None = None,
        cache_index: Array | int = 0,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """Apply the block.

        Args:
          x: ``(B, T, D)`` hidden states of ``T`` consecutive positions.
          allowed: ``(B or 1, 1, T, Tk)`` bool attention pattern; ``Tk`` is
            ``T`` without a cache and the cache length ``L`` with one.
          kv_cache: optional ``(k, v)``, each ``(B, H, L, Dh)``; this call's keys
            and values are written at ``cache_index`` and attention runs over the
            whole cache (``allowed`` hides the slots not written yet).
          cache_index: first cache slot of this call's positions.

        Returns:
          ``(B, T, D)`` new hidden states and the updated cache (``None`` if no
          cache was given).
        """
        b, t, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, t, 3, self.num_heads, self.head_dim)
        # (B, T, H, Dh) -> (B, H, T, Dh): the cache layout, heads before time.
        q, k, v = (jnp.swapaxes(qkv[:, :, i], 1, 2) for i in range(3))
        new_cache = None
        if kv_cache is not None:
            cache_k, cache_v = kv_cache
            start = (0, 0, cache_index, 0)
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
            new_cache = (k, v)
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) * (self.head_dim**-0.5)
        scores = jnp.where(allowed, scores, _MASKED_SCORE)
        weights = jax.nn.softmax(scores, axis=-1)
        attended = jnp.einsum("bhqk,bhkd->bqhd", weights, v).reshape(b, t, d)
        x = x + self.out(attended)
        x = x + self.down(jax.nn.gelu(self.up(self.norm2(x))))
        return x, new_cache


def _make_norm(kind: str, d_model: int, rngs: nnx.Rngs) -> nnx.Module:
    if kind == "layernorm":
        return nnx.LayerNorm(d_model, rngs=rngs)
    if kind == "rmsnorm":
        return nnx.RMSNorm(d_model, rngs=rngs)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


class TransformerLM(nnx.Module):
    """Decoder-only causal LM: token + learned position embeddings, pre-norm blocks.

    Args:
      vocab_size: number of token ids ``V``.
      max_len: longest sequence (prompt + completion) the position table covers.
      d_model: hidden width ``D``; must be divisible by ``num_heads``.
      num_layers: number of transformer blocks.
      num_heads: attention heads ``H``; head width ``Dh = D / H``.
      mlp_ratio: MLP hidden width is ``mlp_ratio * D``.
      tie_embeddings: output logits reuse the token embedding (``h @ E^T``);
        otherwise a separate ``Linear(D, V)`` head.
      norm: ``"layernorm"`` or ``"rmsnorm"`` (all norms of the model).
      rngs: parameter initialisation streams.
    """

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: int = 4,
        *,
        tie_embeddings: bool = True,
        norm: Literal["layernorm", "rmsnorm"] = "layernorm",
        rngs: nnx.Rngs,
    ) -> None:
        for name, value in (
            ("vocab_size", vocab_size),
            ("max_len", max_len),
            ("d_model", d_model),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("mlp_ratio", mlp_ratio),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if d_model % num_heads:
            raise ValueError(
                f"d_model must be divisible by num_heads, got d_model={d_model}, num_heads={num_heads}"
            )
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.tie_embeddings = tie_embeddings
        self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
        self.pos_embed = nnx.Embed(max_len, d_model, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.blocks = nnx.List(
            [Block(d_model, num_heads, mlp_ratio, norm, rngs=rngs) for _ in range(num_layers)]
        )
        self.final_norm = _make_norm(norm, d_model, rngs)
        self.lm_head = None if tie_embeddings else nnx.Linear(d_model, vocab_size, rngs=rngs)

    # ------------------------------------------------------------------ core
    def _hidden(
        self,
        tokens: Array,
        positions: Array,
        allowed: Array,
        cache: KVCache | None,
        cache_index: Array | int,
    ) -> tuple[Array, KVCache | None]:
        x = self.embed(tokens) + self.pos_embed(positions)[None]
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, allowed, None if cache is None else cache[i], cache_index)
            new_cache.append(layer_cache)
        return self.final_norm(x), (None if cache is None else tuple(new_cache))

    def _logits(self, h: Array) -> Array:
        if self.lm_head is None:
            return self.embed.attend(h)
        return self.lm_head(h)

    def _check_tokens(self, tokens: Array, name: str = "tokens") -> None:
        if tokens.ndim != 2:
            raise ValueError(f"{name} must be (B, T), got shape {tokens.shape}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
        if tokens.shape[1] > self.max_len:
            raise ValueError(
                f"{name} has length {tokens.shape[1]} (shape {tokens.shape}) but the model's "
                f"max_len is {self.max_len}"
            )

    def _check_mask(self, mask: Array | None, shape: tuple[int, ...], name: str = "mask") -> None:
        if mask is not None and mask.shape != shape:
            raise ValueError(f"{name} must have shape {shape} like the tokens, got {mask.shape}")

    # ------------------------------------------------------------ public API
    def __call__(self, tokens: Array, *, mask: Array | None = None) -> Array:
        """Full causal forward.

        Args:
          tokens: ``(B, T)`` int token ids, ``T <= max_len``.
          mask: optional ``(B, T)`` padding mask (1 = real token); padding
            positions are hidden from every other position as keys.

        Returns:
          ``(B, T, V)`` logits; ``logits[:, t]`` predicts token ``t + 1``.
        """
        self._check_tokens(tokens)
        self._check_mask(mask, tokens.shape)
        positions = jnp.arange(tokens.shape[1])
        h, _ = self._hidden(tokens, positions, _allowed(positions, positions, mask), None, 0)
        return self._logits(h)

    def init_cache(self, batch_size: int, cache_len: int, dtype: jnp.dtype = jnp.float32) -> KVCache:
        """Zeroed KV cache: per layer ``(k, v)``, each ``(B, H, cache_len, Dh)``."""
        shape = (batch_size, self.num_heads, cache_len, self.head_dim)
        return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.blocks)

    def prefill(
        self, tokens: Array, cache_len: int, *, key_mask: Array | None = None
    ) -> tuple[Array, KVCache]:
        """Run the prompt through the model and fill a fresh KV cache.

        Args:
          tokens: ``(B, P)`` prompt ids.
          cache_len: ``L >= P``, total slots of the cache (prompt + new tokens).
          key_mask: optional ``(B, L)`` padding mask over all cache slots.

        Returns:
          Logits of the last prompt position ``(B, V)`` (the distribution of
          the first new token) and the cache with slots ``[0, P)`` written.
        """
        self._check_tokens(tokens)
        b, p = tokens.shape
        if not p <= cache_len <= self.max_len:
            raise ValueError(f"cache_len must be in [P={p}, max_len={self.max_len}], got {cache_len}")
        self._check_mask(key_mask, (b, cache_len), "key_mask")
        positions = jnp.arange(p)
        allowed = _allowed(positions, jnp.arange(cache_len), key_mask)
        h, cache = self._hidden(tokens, positions, allowed, self.init_cache(b, cache_len), 0)
        # Only the last position's logits are needed to start sampling.
        return self._logits(h[:, -1]), cache

    def decode_step(
        self, token: Array, position: Array | int, cache: KVCache, *, key_mask: Array | None = None
    ) -> tuple[Array, KVCache]:
        """Feed one token per row at ``position`` and attend over the cache.

        Args:
          token: ``(B,)`` ids of the token at ``position``.
          position: scalar int (may be traced); slot the token's key/value go to.
          cache: per-layer ``(k, v)``, each ``(B, H, L, Dh)``, slots
            ``[0, position)`` already written.
          key_mask: optional ``(B, L)`` padding mask over cache slots.

        Returns:
          ``(B, V)`` logits of the token at ``position + 1`` and the updated cache.
        """
        cache_len = cache[0][0].shape[2]
        position = jnp.asarray(position, jnp.int32)
        allowed = _allowed(position[None], jnp.arange(cache_len), key_mask)
        h, cache = self._hidden(token[:, None], position[None], allowed, cache, position)
        return self._logits(h[:, 0]), cache


# ---------------------------------------------------------------- sampling


def _sampling_logits(logits: Array, temperature: float, top_k: int | None) -> Array:
    """Temperature-scaled logits with everything outside the top ``k`` at -inf."""
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth_largest, logits, -jnp.inf)
    return logits


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
    """Sample new token number ``step`` from ``(B, V)`` logits; shared by both samplers.

    Returns ``(token, policy log-prob, active, done)``, each ``(B,)``: rows that
    already emitted EOS get ``pad_id``, log-prob 0 and ``active = False``.
    """
    if temperature == 0.0:
        sampled = jnp.argmax(logits, axis=-1)
    else:
        step_key = jax.random.fold_in(key, step)
        sampled = jax.random.categorical(step_key, _sampling_logits(logits, temperature, top_k))
    sampled = sampled.astype(jnp.int32)
    # The policy's log-prob (temperature 1, no top-k): what the trainer recomputes.
    policy_logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logp = jnp.take_along_axis(policy_logp, sampled[:, None], axis=-1)[:, 0]
    active = ~done
    token = jnp.where(active, sampled, pad_id)
    logp = jnp.where(active, logp, 0.0)
    if eos_id is not None:
        done = done | (active & (sampled == eos_id))
    return token, logp, active, done


def _check_sampling_args(
    model: TransformerLM,
    prompts: Array,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    eos_id: int | None,
    pad_id: int,
    prompt_mask: Array | None,
) -> None:
    model._check_tokens(prompts, "prompts")
    b, p = prompts.shape
    if p < 1:
        raise ValueError(f"prompts must hold at least one token, got shape {prompts.shape}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if p + max_new_tokens > model.max_len:
        raise ValueError(
            f"prompts of shape {prompts.shape} plus max_new_tokens={max_new_tokens} need "
            f"{p + max_new_tokens} positions but the model's max_len is {model.max_len}"
        )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and not 1 <= top_k <= model.vocab_size:
        raise ValueError(f"top_k must be in [1, vocab_size={model.vocab_size}], got {top_k}")
    for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
        if value is not None and not 0 <= value < model.vocab_size:
            raise ValueError(f"{name} must be in [0, vocab_size={model.vocab_size}), got {value}")
    model._check_mask(prompt_mask, (b, p), "prompt_mask")


def _assemble(prompts: Array, tokens: Array, log_probs: Array, active: Array) -> GenerationOutput:
    """Stack per-step ``(N, B)`` outputs after the ``(B, P)`` prompt."""
    b, p = prompts.shape
    zeros = jnp.zeros((b, p), jnp.float32)
    completion_mask = active.T.astype(jnp.float32)
    return GenerationOutput(
        tokens=jnp.concatenate([prompts.astype(jnp.int32), tokens.T], axis=1),
        completion_mask=jnp.concatenate([zeros, completion_mask], axis=1),
        log_probs=jnp.concatenate([zeros, log_probs.T], axis=1),
        lengths=jnp.sum(active, axis=0).astype(jnp.int32),
    )


def _full_key_mask(prompt_mask: Array | None, max_new_tokens: int) -> Array | None:
    if prompt_mask is None:
        return None
    b = prompt_mask.shape[0]
    return jnp.concatenate([prompt_mask.astype(bool), jnp.ones((b, max_new_tokens), bool)], axis=1)


def sample_with_cache(
    model: TransformerLM,
    prompts: Array,
    key: Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    prompt_mask: Array | None = None,
) -> GenerationOutput:
    """KV-cache sampling as a pure function; call it inside your own ``jit``.

    Prefill over the ``(B, P)`` prompt, then ``lax.scan`` over the remaining
    ``N - 1`` positions, each one :meth:`TransformerLM.decode_step`. New token
    ``i`` (0-based) is drawn with ``fold_in(key, i)``. See
    :class:`GenerationOutput` for the outputs and the module docstring for
    what ``temperature``/``top_k`` change (the sampling, not the log-probs).
    """
    _check_sampling_args(model, prompts, max_new_tokens, temperature, top_k, eos_id, pad_id, prompt_mask)
    b, p = prompts.shape
    key_mask = _full_key_mask(prompt_mask, max_new_tokens)
    emit = functools.partial(
        _emit, key=key, temperature=temperature, top_k=top_k, eos_id=eos_id, pad_id=pad_id
    )
    logits, cache = model.prefill(prompts, p + max_new_tokens, key_mask=key_mask)
    first, first_logp, first_active, done = emit(logits, 0, done=jnp.zeros((b,), bool))

    def step(carry, i):
        cache, prev, done = carry
        # The previous token sits at position P + i - 1 and predicts token i.
        logits, cache = model.decode_step(prev, p + i - 1, cache, key_mask=key_mask)
        token, logp, active, done = emit(logits, i, done=done)
        return (cache, token, done), (token, logp, active)

    _, (tokens, logps, actives) = jax.lax.scan(step, (cache, first, done), jnp.arange(1, max_new_tokens))
    return _assemble(
        prompts,
        jnp.concatenate([first[None], tokens]),
        jnp.concatenate([first_logp[None], logps]),
        jnp.concatenate([first_active[None], actives]),
    )


def sample_without_cache(
    model: TransformerLM,
    prompts: Array,
    key: Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    prompt_mask: Array | None = None,
) -> GenerationOutput:
    """Reference sampler: a full causal forward over a fixed ``(B, P + N)`` buffer per step.

    Same arguments, key schedule and outputs as :func:`sample_with_cache`.
    Slots not generated yet hold ``pad_id``; causality keeps them from
    influencing the position being sampled, so the buffer never changes shape.
    """
    _check_sampling_args(model, prompts, max_new_tokens, temperature, top_k, eos_id, pad_id, prompt_mask)
    b, p = prompts.shape
    key_mask = _full_key_mask(prompt_mask, max_new_tokens)
    emit = functools.partial(
        _emit, key=key, temperature=temperature, top_k=top_k, eos_id=eos_id, pad_id=pad_id
    )
    buffer = jnp.concatenate(
        [prompts.astype(jnp.int32), jnp.full((b, max_new_tokens), pad_id, jnp.int32)], axis=1
    )

    def step(carry, i):
        buffer, done = carry
        logits = model(buffer, mask=key_mask)
        last = jax.lax.dynamic_index_in_dim(logits, p + i - 1, axis=1, keepdims=False)
        token, logp, active, done = emit(last, i, done=done)
        buffer = jax.lax.dynamic_update_slice(buffer, token[:, None], (0, p + i))
        return (buffer, done), (token, logp, active)

    _, (tokens, logps, actives) = jax.lax.scan(
        step, (buffer, jnp.zeros((b,), bool)), jnp.arange(max_new_tokens)
    )
    return _assemble(prompts, tokens, logps, actives)


# ------------------------------------------------------- compiled entry points

_TRACE_COUNTS: collections.Counter[str] = collections.Counter()


def generate_trace_count(kind: Literal["cache", "no_cache"] = "cache") -> int:
    """How many times the jitted sampler of ``kind`` has been traced in this process."""
    return _TRACE_COUNTS[kind]


@functools.partial(
    jax.jit,
    static_argnums=0,
    static_argnames=("use_cache", "max_new_tokens", "temperature", "top_k", "eos_id", "pad_id"),
)
def _generate_jit(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompts: Array,
    key: Array,
    prompt_mask: Array | None,
    *,
    use_cache: bool,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    eos_id: int | None,
    pad_id: int,
) -> GenerationOutput:
    # Runs only while tracing: counts compilations, not calls.
    _TRACE_COUNTS["cache" if use_cache else "no_cache"] += 1
    model = nnx.merge(graphdef, state)
    sample = sample_with_cache if use_cache else sample_without_cache
    return sample(
        model,
        prompts,
        key,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        eos_id=eos_id,
        pad_id=pad_id,
        prompt_mask=prompt_mask,
    )


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
        self.settings = dict(
            use_cache=use_cache,
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            top_k=None if top_k is None else int(top_k),
            eos_id=None if eos_id is None else int(eos_id),
            pad_id=int(pad_id),
        )

    @classmethod
    def from_model(cls, model: TransformerLM, **settings) -> Sampler:
        """Sampler for ``model``'s structure; pass ``nnx.state(model)`` when calling."""
        return cls(nnx.graphdef(model), **settings)

    def __call__(
        self, state: nnx.State, prompts: Array, *, key: Array, prompt_mask: Array | None = None
    ) -> GenerationOutput:
        """Sample completions for ``(B, P)`` ``prompts`` with the parameters ``state``."""
        return _generate_jit(self.graphdef, state, jnp.asarray(prompts), key, prompt_mask, **self.settings)


def generate(
    model: TransformerLM,
    prompts: Array,
    max_new_tokens: int,
    *,
    key: Array,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    prompt_mask: Array | None = None,
) -> GenerationOutput:
    """Sample ``max_new_tokens`` after each ``(B, P)`` prompt with the compiled KV-cache sampler.

    Sampling uses ``temperature`` (0 = greedy) and ``top_k``; the returned
    ``log_probs`` are the policy's (temperature 1, no top-k) so they equal
    ``token_log_probs(model(out.tokens), out.tokens)`` on completion tokens.
    Prompts share one length ``P``; left-pad shorter ones and pass
    ``prompt_mask`` (see the module docstring). Calls with the same shapes and
    settings reuse one compiled program.
    """
    graphdef, state = nnx.split(model)
    return Sampler(
        graphdef,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        eos_id=eos_id,
        pad_id=pad_id,
    )(state, prompts, key=key, prompt_mask=prompt_mask)


def generate_without_cache(
    model: TransformerLM,
    prompts: Array,
    max_new_tokens: int,
    *,
    key: Array,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    prompt_mask: Array | None = None,
) -> GenerationOutput:
    """Compiled reference sampler that recomputes the full forward each step.

    Same arguments, key schedule and outputs as :func:`generate`; for the same
    key both emit the same tokens. ``O(N)`` times more work: use it to check
    and benchmark the cache, not to train.
    """
    graphdef, state = nnx.split(model)
    return Sampler(
        graphdef,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        eos_id=eos_id,
        pad_id=pad_id,
        use_cache=False,
    )(state, prompts, key=key, prompt_mask=prompt_mask)
