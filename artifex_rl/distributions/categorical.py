"""Categorical distributions from logits: the one log-prob and entropy implementation.

Every categorical log-prob and entropy in the package (the discrete policy
head, the causal-LM token head, the entropy bonus of the losses) goes through
:func:`categorical_log_prob` and :func:`categorical_entropy`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def _as_float(x: Any) -> Array:
    """``x`` as a floating array of at least float32 precision (bf16/f16 logits are promoted)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.float32)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def categorical_log_prob(logits: Any, actions: Any) -> Array:
    """``log softmax(logits)[actions]``.

    Args:
      logits: ``(..., A)`` unnormalised log-probabilities (``-inf`` masks an action).
      actions: ``(...)`` integer actions (a float is truncated here; :class:`CategoricalPolicy` refuses one).

    Returns:
      ``(...)`` log-probs, at least float32.
    """
    logp = jax.nn.log_softmax(_as_float(logits), axis=-1)
    index = jnp.asarray(actions)[..., None].astype(jnp.int32)
    return jnp.take_along_axis(logp, index, axis=-1)[..., 0]


def entropy_from_log_probs(logp: Any) -> Array:
    """``H = -sum_a p_a log p_a`` over the last axis of normalised log-probs ``logp``.

    Finite in value *and* gradient where ``logp = -inf`` (masked actions):
    ``log p`` is zeroed where ``p == 0`` before multiplying, because selecting
    ``0 * -inf`` out afterwards still leaves a NaN gradient.
    """
    p = jnp.exp(logp)
    return -jnp.sum(p * jnp.where(p > 0, logp, 0.0), axis=-1)


def categorical_entropy(logits: Any) -> Array:
    """Entropy of ``softmax(logits)`` over the last axis.

    Args:
      logits: ``(..., A)``.

    Returns:
      ``(...)`` entropies, at least float32 (see :func:`entropy_from_log_probs`).
    """
    logits = jnp.asarray(logits)
    if logits.ndim < 1:
        raise ValueError(f"logits has shape {logits.shape}, expected (..., A)")
    return entropy_from_log_probs(jax.nn.log_softmax(_as_float(logits), axis=-1))


@dataclasses.dataclass(frozen=True)
class CategoricalPolicy:
    """Discrete actions from logits ``(..., A)``; actions are integers ``(...)`` (any other dtype is a TypeError)."""

    def log_prob(self, output: Array, actions: Array) -> Array:
        logits = output  # a (mean, log_std) pair is refused by the trainers (rl.base.check_output_fits)
        if jnp.ndim(actions) != jnp.ndim(logits) - 1:
            raise ValueError(
                f"the categorical policy needs one integer action per row of logits: logits have shape "
                f"{jnp.shape(logits)}, so actions should have shape {jnp.shape(logits)[:-1]}, got "
                f"{jnp.shape(actions)}; continuous actions (..., D) need policy='gaussian' and a model "
                "returning (mean, log_std)"
            )
        dtype = jnp.result_type(actions)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(
                f"the categorical policy needs integer actions (an integer dtype such as int32), got actions of "
                f"dtype {dtype}: they index the logits, and a float would be truncated silently. Cast "
                "integer-valued actions with .astype(np.int32); continuous actions need policy='gaussian'"
            )
        return categorical_log_prob(logits, actions)

    def entropy(self, output: Array) -> Array:
        return categorical_entropy(output)

    def sample(self, output: Array, key: Array) -> Array:
        return jax.random.categorical(key, output, axis=-1)

    def mode(self, output: Array) -> Array:
        return jnp.argmax(output, axis=-1)


__all__ = [
    "CategoricalPolicy",
    "categorical_entropy",
    "categorical_log_prob",
    "entropy_from_log_probs",
]
