"""Causal-LM token distributions: the one next-token log-prob implementation.

A causal LM returns logits ``(B, T, V)`` for tokens ``(B, T)``: position ``t``
predicts token ``t + 1``. Log-probs and entropies here are per token
``(B, T)`` and aligned with the *token* they score (position 0, which nothing
predicts, gets 0), so a completion mask over the token array selects exactly
the scored completion tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from artifex_rl.distributions.categorical import categorical_entropy, categorical_log_prob

Array = jax.Array


def token_log_probs(logits: Array, tokens: Array) -> Array:
    """Per-token log-probs of ``tokens`` under next-token ``logits``.

    Args:
      logits: ``(B, T, V)``; ``logits[:, t]`` is the distribution of token ``t + 1``.
      tokens: ``(B, T)`` integer tokens.

    Returns:
      ``(B, T)`` float (at least float32): entry ``t`` is
      ``log p(tokens[:, t] | tokens[:, :t])`` for ``t >= 1``; entry 0 (the
      first token, predicted by nothing) is 0.
    """
    scored = categorical_log_prob(logits[:, :-1], tokens[:, 1:])
    return jnp.pad(scored, ((0, 0), (1, 0)))


def token_entropies(logits: Array) -> Array:
    """Entropy of each next-token distribution, aligned like :func:`token_log_probs`.

    Args:
      logits: ``(B, T, V)``.

    Returns:
      ``(B, T)``: entry ``t`` is the entropy of the distribution that produced
      token ``t`` (entry 0 is 0).
    """
    return jnp.pad(categorical_entropy(logits[:, :-1]), ((0, 0), (1, 0)))


def score_sequences(model: Any, prompts: Array, completions: Array) -> tuple[Array, Array]:
    """Per-token log-probs and entropies of ``completions`` given ``prompts``.

    One forward pass of the causal LM over ``concat(prompts, completions)``.

    Args:
      model: maps tokens ``(B, L)`` to logits ``(B, L, V)``.
      prompts: ``(B, P)`` int tokens.
      completions: ``(B, N)`` int tokens.

    Returns:
      ``(log_probs, entropies)``, each ``(B, N)``: entry ``t`` scores
      completion token ``t`` (predicted from position ``P + t - 1``).
    """
    tokens = jnp.concatenate([prompts, completions], axis=1)
    p = prompts.shape[1]
    # Only positions P-1 .. L-2 predict completion tokens: the softmax over the
    # vocabulary runs on those N rows, not on the prompt's.
    window = model(tokens)[:, p - 1 : -1]
    return categorical_log_prob(window, completions), categorical_entropy(window)


@dataclasses.dataclass(frozen=True)
class TokenPolicy:
    """Causal-LM head: logits ``(B, T, V)`` score tokens ``(B, T)`` per position."""

    def log_prob(self, output: Array, actions: Array) -> Array:
        return token_log_probs(output, actions)

    def entropy(self, output: Array) -> Array:
        return token_entropies(output)

    def sample(self, output: Array, key: Array) -> Array:
        # Samples the token that follows the last position.
        return jax.random.categorical(key, output[:, -1], axis=-1)


__all__ = ["TokenPolicy", "score_sequences", "token_entropies", "token_log_probs"]
