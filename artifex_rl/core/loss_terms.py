"""A loss as ``(sum over items, item count)``: exact under gradient accumulation.

A mean over tokens (or valid steps, or pairs) is ``sum / count``. When a batch
is split into micro-batches that hold different numbers of items, the mean of
the micro-batch means is not the batch mean; the ratio of the summed totals to
the summed counts is. ``compute_loss`` may therefore return, instead of a
scalar, one :class:`LossTerm` or a tuple of them; the trainer's update sums
each term's totals and counts over the micro-batches and minimises
``sum_i total_i / count_i`` (the Flax examples' ``(loss, normalizing_factor)``
form; TRL's ``num_items_in_batch``; DAPO's token-level normalisation).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class LossTerm(NamedTuple):
    """One normalised loss term: ``total / count`` over the whole (mini)batch.

    Attributes:
      total: scalar, the sum of the per-item losses (masked items contribute 0).
      count: scalar, the number of items ``total`` sums over (e.g. valid tokens).
        It must not depend on the parameters (it is a count of the data).
    """

    total: Array
    count: Array


def as_terms(loss) -> tuple[LossTerm, ...]:
    """Normalise a ``compute_loss`` result to a tuple of :class:`LossTerm`.

    A plain scalar ``x`` becomes ``LossTerm(x, 1)``: a per-micro-batch mean,
    averaged over equal-sized micro-batches.
    """
    if isinstance(loss, LossTerm):
        return (loss,)
    if isinstance(loss, tuple) and loss and all(isinstance(t, LossTerm) for t in loss):
        return loss
    return (LossTerm(jnp.asarray(loss), jnp.ones((), jnp.float32)),)


def terms_value(terms: tuple[LossTerm, ...]) -> Array:
    """``sum_i total_i / max(count_i, 1)``: the scalar the terms stand for."""
    return sum(t.total / jnp.maximum(jnp.asarray(t.count, jnp.float32), 1.0) for t in terms)


def loss_value(loss) -> Array:
    """The scalar a ``compute_loss`` result stands for (a scalar, a LossTerm or a tuple of them)."""
    return terms_value(as_terms(loss))
