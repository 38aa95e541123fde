"""A tiny causal transformer language model with a public KV-cache interface.

The model is small on purpose: it is the policy of the verifiable text tasks in
:mod:`artifex_rl.tasks` and the model the RL trainers' learning tests fine-tune.
It implements :class:`artifex_rl.models.sampling.DecoderLM` (``init_cache``,
``prefill``, ``decode_step``), so :class:`~artifex_rl.models.sampling.TokenSampler`
samples it with a KV cache; the compiled whole-sequence helpers
(:func:`generate`, :class:`Sampler`) live in :mod:`artifex_rl.models.generate`
and are re-exported here.

Conventions:

* ``mask`` marks real tokens (1) versus padding (0) *as keys*: no position
  attends to a padding key except itself (so a padding row never sees an
  all-masked softmax).
* **Positions follow the mask** (as in Gemma): a token's position is the number
  of real tokens before it, so a left-padded prompt is read exactly like the
  unpadded one. Without a mask, positions are array indices.
* The KV cache has one slot per sequence index; its layout per layer is
  ``(k, v)``, each ``(B, H, L, Dh)``, written with ``lax.dynamic_update_slice``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

# One (key, value) pair per layer, each (B, H, L, Dh).
KVCache = tuple[tuple[Array, Array], ...]

# Finite instead of -inf: masked scores then vanish under softmax without any
# chance of inf - inf = NaN.
_MASKED_SCORE = -1e30


def position_ids(mask: Array | None, length: int) -> Array:
    """Positions ``(B or 1, T)`` of ``T`` slots: the count of real (mask 1) slots before each.

    ``None``: array indices ``0 .. T-1``. Leading padding gets position 0
    (it attends only to itself, so its value is irrelevant).
    """
    if mask is None:
        return jnp.arange(length)[None]
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


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
      value_head: add a scalar head on the final hidden states (zero-initialised
        ``Linear(D, 1)``, sharing the trunk as TRL's ``...WithValueHead``): the
        model then returns ``(logits (B, T, V), values (B, T))``, what PPO on
        token sequences needs. ``prefill``/``decode_step`` still return logits
        only, so the samplers are unchanged.
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
        value_head: bool = False,
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
        # Zero-initialised: V = 0 at the start, so the first value targets are the returns themselves.
        self.value_head = (
            nnx.Linear(d_model, 1, kernel_init=nnx.initializers.zeros_init(), rngs=rngs) if value_head else None
        )

    # ------------------------------------------------------------------ core
    def _hidden(
        self,
        tokens: Array,
        positions: Array,
        allowed: Array,
        cache: KVCache | None,
        cache_index: Array | int,
    ) -> tuple[Array, KVCache | None]:
        """``(B, T)`` tokens at ``(B or 1, T)`` positions -> final-norm hidden states ``(B, T, D)``."""
        x = self.embed(tokens) + self.pos_embed(positions)
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

    @staticmethod
    def _check_mask(mask: Array | None, shape: tuple[int, ...], name: str = "mask") -> None:
        if mask is not None and mask.shape != shape:
            raise ValueError(f"{name} must have shape {shape} like the tokens, got {mask.shape}")

    # ------------------------------------------------------------ public API
    def __call__(self, tokens: Array, *, mask: Array | None = None) -> Array | tuple[Array, Array]:
        """Full causal forward.

        Args:
          tokens: ``(B, T)`` int token ids, ``T <= max_len``.
          mask: optional ``(B, T)`` padding mask (1 = real token); padding
            positions are hidden from every other position as keys, and
            positions count real tokens only (see the module docstring).

        Returns:
          ``(B, T, V)`` logits; ``logits[:, t]`` predicts token ``t + 1``. With
          ``value_head=True``: ``(logits, values)``, ``values (B, T)`` float32,
          ``values[:, t]`` the value of the state after tokens ``0..t``.
        """
        self._check_tokens(tokens)
        self._check_mask(mask, tokens.shape)
        slots = jnp.arange(tokens.shape[1])
        allowed = _allowed(slots, slots, mask)
        h, _ = self._hidden(tokens, position_ids(mask, tokens.shape[1]), allowed, None, 0)
        if self.value_head is None:
            return self._logits(h)
        return self._logits(h), self.value_head(h)[..., 0].astype(jnp.float32)

    def init_cache(self, batch_size: int, cache_len: int, dtype: jnp.dtype = jnp.float32) -> KVCache:
        """Zeroed KV cache: per layer ``(k, v)``, each ``(B, H, cache_len, Dh)``."""
        if not 1 <= cache_len <= self.max_len:
            raise ValueError(f"cache_len must be in [1, max_len={self.max_len}], got {cache_len}")
        shape = (batch_size, self.num_heads, cache_len, self.head_dim)
        return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.blocks)

    def prefill(self, tokens: Array, cache: KVCache, *, mask: Array | None = None) -> tuple[Array, KVCache]:
        """Run the prompt through the model, writing its keys/values to cache slots ``[0, P)``.

        Args:
          tokens: ``(B, P)`` prompt ids.
          cache: from :meth:`init_cache`, ``L >= P`` slots.
          mask: optional ``(B, L)`` padding mask over all cache slots.

        Returns:
          Logits of the last prompt position ``(B, V)`` (the distribution of
          the first new token) and the cache.
        """
        self._check_tokens(tokens)
        b, p = tokens.shape
        cache_len = cache[0][0].shape[2]
        if not p <= cache_len:
            raise ValueError(f"the cache has {cache_len} slots, fewer than the prompt length P={p}")
        self._check_mask(mask, (b, cache_len), "mask")
        slots = jnp.arange(p)
        positions = position_ids(mask, cache_len)[:, :p]
        h, cache = self._hidden(tokens, positions, _allowed(slots, jnp.arange(cache_len), mask), cache, 0)
        # Only the last position's logits are needed to start sampling.
        return self._logits(h[:, -1]), cache

    def decode_step(
        self, token: Array, index: Array | int, cache: KVCache, *, mask: Array | None = None
    ) -> tuple[Array, KVCache]:
        """Feed one token per row at cache slot ``index`` and attend over slots ``<= index``.

        Args:
          token: ``(B,)`` ids of the token in slot ``index``.
          index: scalar int (may be traced); slots ``[0, index)`` are written.
          cache: per-layer ``(k, v)``, each ``(B, H, L, Dh)``.
          mask: optional ``(B, L)`` padding mask over cache slots.

        Returns:
          ``(B, V)`` logits of the token after slot ``index`` and the updated cache.
        """
        cache_len = cache[0][0].shape[2]
        index = jnp.asarray(index, jnp.int32)
        if mask is None:
            positions = index[None, None]
        else:
            self._check_mask(mask, (token.shape[0], cache_len), "mask")
            positions = jax.lax.dynamic_slice_in_dim(position_ids(mask, cache_len), index, 1, axis=1)
        allowed = _allowed(index[None], jnp.arange(cache_len), mask)
        h, cache = self._hidden(token[:, None], positions, allowed, cache, index)
        return self._logits(h[:, 0]), cache


# The compiled whole-sequence samplers moved to models/generate.py; these names
# stay importable from here.
from artifex_rl.models.generate import (  # noqa: E402
    GenerationOutput,
    Sampler,
    generate,
    generate_trace_count,
    generate_without_cache,
    sample_with_cache,
    sample_without_cache,
)

__all__ = [
    "Block",
    "GenerationOutput",
    "KVCache",
    "Sampler",
    "TransformerLM",
    "generate",
    "generate_trace_count",
    "generate_without_cache",
    "position_ids",
    "sample_with_cache",
    "sample_without_cache",
]
