"""Small causal LMs that have nothing of the library's TransformerLM: ``model(tokens) -> logits`` only."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx


class UserLM(nnx.Module):
    """A user's own causal LM (embedding, causal self-attention, linear head); no cache, no mask, no max_len."""

    def __init__(self, vocab: int, dim: int = 16, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=dim, qkv_features=dim, decode=False, rngs=rngs)
        self.out = nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        x = x + self.attn(x, mask=nnx.make_causal_mask(tokens), deterministic=True)
        return self.out(jnp.tanh(x))


class CurrentTokenLM(nnx.Module):
    """``tokens (B, L) -> logits (B, L, V)``; position ``i`` sees only token ``i`` (causal by construction)."""

    def __init__(self, vocab: int, dim: int = 8, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.out = nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, tokens):
        return self.out(jnp.tanh(self.embed(tokens)))

    def numpy_params(self) -> dict[str, np.ndarray]:
        """A float64 copy of the parameters, for :func:`current_token_logits`."""
        return {
            "embedding": np.asarray(self.embed.embedding[...], np.float64),
            "kernel": np.asarray(self.out.kernel[...], np.float64),
            "bias": np.asarray(self.out.bias[...], np.float64),
        }


def current_token_logits(params: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """:class:`CurrentTokenLM`'s forward in float64 numpy."""
    return np.tanh(params["embedding"][tokens]) @ params["kernel"] + params["bias"]


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
