"""The anchor model and batch shared by ``bench/vs_artifex.py`` and ``bench/floors.py``.

The seeds' style of tiny causal LM: token embedding (vocab 64, width 128), a
causal running mean over positions, two dense layers; 64 sequences of 32
tokens whose first 8 are a prompt shared by groups of 4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

VOCAB, WIDTH, SEQ, PROMPT, BATCH, GROUP = 64, 128, 32, 8, 64, 4
LR, BETA_GRPO, BETA_DPO, CLIP, ENTROPY = 1e-3, 0.04, 0.1, 0.2, 0.01


class AnchorLM(nnx.Module):
    """Embedding, causal running mean, two dense layers: ``tokens (B, T) -> logits (B, T, V)``."""

    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, WIDTH, rngs=rngs)
        self.hidden = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
        self.out = nnx.Linear(WIDTH, VOCAB, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens)
        h = jnp.cumsum(h, axis=1) / jnp.arange(1, tokens.shape[1] + 1)[None, :, None]
        return self.out(jax.nn.relu(self.hidden(h)))


class AnchorValueLM(AnchorLM):
    """The anchor LM with a value head (PPO): ``tokens (B, T) -> (logits (B, T, V), values (B, T))``."""

    def __init__(self, rngs: nnx.Rngs):
        super().__init__(rngs)
        self.value = nnx.Linear(WIDTH, 1, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens)
        h = jnp.cumsum(h, axis=1) / jnp.arange(1, tokens.shape[1] + 1)[None, :, None]
        h = jax.nn.relu(self.hidden(h))
        return self.out(h), self.value(h)[..., 0]


def data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    seqs = rng.integers(0, VOCAB, (BATCH, SEQ))
    seqs[:, :PROMPT] = np.repeat(rng.integers(0, VOCAB, (BATCH // GROUP, PROMPT)), GROUP, axis=0)
    return {
        "sequences": seqs.astype(np.int32),
        "rejected": rng.integers(0, VOCAB, (BATCH, SEQ)).astype(np.int32),
        "rewards": rng.normal(size=BATCH).astype(np.float32),
        "response_mask": np.concatenate([np.zeros((BATCH, PROMPT)), np.ones((BATCH, SEQ - PROMPT))], 1)
        .astype(np.float32),
    }


def completion_log_probs(model, seqs) -> jax.Array:
    """Per-token log-probs of the completion tokens ``(B, SEQ - PROMPT)`` under ``model``."""
    logits = model(seqs)
    logits = logits[0] if isinstance(logits, tuple) else logits  # a value-head LM
    logp = jax.nn.log_softmax(logits[:, :-1], -1)
    tok = jnp.take_along_axis(logp, seqs[:, 1:, None], -1)[..., 0]
    return tok[:, PROMPT - 1:]


def completion_values(model, seqs) -> jax.Array:
    """The value head's ``V`` of the state before each completion token ``(B, SEQ - PROMPT)``."""
    return model(seqs)[1][:, PROMPT - 1:-1]
