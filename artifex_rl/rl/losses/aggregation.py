"""Masked reductions and token-loss aggregation, as scalars or as :class:`LossTerm`.

A :class:`~artifex_rl.core.loss_terms.LossTerm` ``(total, count)`` is a mean
that stays exact under gradient accumulation: the trainer sums the totals and
the counts over the micro-batches and divides once, so a micro-batch with more
valid tokens weighs more. The ``*_term`` functions return that form; the
scalar functions (``masked_mean``, ``aggregate_token_loss``) are the same
reductions over the batch they are given.

Masks are read as booleans (non-zero = valid) and broadcast to the masked
array. Masked entries are *selected out* with ``jnp.where``, never multiplied
by zero, so ``inf``/``NaN`` padding cannot leak into a value. Means over an
empty selection are ``0``, not NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from artifex_rl.core.loss_terms import LossTerm
from artifex_rl.rl.losses._common import ArrayLike, as_float, check_choice, valid_mask

Array = jax.Array

#: Token aggregations of the GRPO family; see :func:`token_loss_term`.
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def masked_sum(x: ArrayLike, mask: ArrayLike | None = None, axis: int | Sequence[int] | None = None) -> Array:
    """``sum(where(mask, x, 0), axis)``: the sum of the valid entries of ``x``.

    Args:
      x: any shape.
      mask: broadcastable to ``x``; non-zero = valid. ``None``: all valid.
      axis: axes to reduce (``None``: all).
    """
    x = jnp.asarray(x)
    valid = valid_mask(mask, x.shape)
    if valid is None:
        return jnp.sum(x, axis=axis)
    return jnp.sum(jnp.where(valid, x, 0), axis=axis)


def masked_count(
    x: ArrayLike, mask: ArrayLike | None = None, axis: int | Sequence[int] | None = None
) -> Array:
    """Number of valid entries of ``x`` along ``axis`` (a float of at least float32)."""
    x = jnp.asarray(x)
    valid = valid_mask(mask, x.shape)
    if valid is None:
        valid = jnp.ones(x.shape, bool)
    return jnp.sum(valid, axis=axis).astype(as_float(x).dtype)


def masked_mean(
    x: ArrayLike, mask: ArrayLike | None = None, axis: int | Sequence[int] | None = None
) -> Array:
    """``masked_sum(x, mask, axis) / max(masked_count(x, mask, axis), 1)``.

    An all-masked slice gives ``0`` instead of ``0 / 0 = NaN``; ``mask=None``
    is the plain mean.
    """
    x = as_float(x)
    if mask is None:
        return jnp.mean(x, axis=axis)
    return masked_sum(x, mask, axis) / jnp.maximum(masked_count(x, mask, axis), 1.0)


def masked_mean_term(x: ArrayLike, mask: ArrayLike | None = None) -> LossTerm:
    """``LossTerm(masked_sum(x, mask), masked_count(x, mask))``: a masked mean over the whole batch.

    Summed over micro-batches, ``sum(total) / sum(count)`` is the masked mean
    of the concatenated batch (e.g. the token-level NLL of a causal LM, or a
    PPO loss over the valid steps of padded rollouts).
    """
    x = as_float(x)
    return LossTerm(masked_sum(x, mask), masked_count(x, mask))


def normalize_advantages(x: ArrayLike, mask: ArrayLike | None = None, eps: float = 1e-8) -> Array:
    """Standardise ``x`` over its valid entries.

    ``(x - mean) / (std + eps)`` with ``mean`` and the population ``std``
    (``ddof=0``) taken over valid entries only. Masked entries come out as
    exactly ``0``. If every valid entry is equal the output is exactly ``0``
    too: ``x - mean`` would otherwise be float round-off, blown up by a tiny
    ``std``.

    Args:
      x: any shape.
      mask: broadcastable to ``x``; non-zero = valid. ``None``: all valid.
      eps: added to the std.

    Returns:
      Array of the shape of ``x``.
    """
    x = as_float(x)
    valid = valid_mask(mask, x.shape)
    mean = masked_mean(x, valid)
    centered = x - mean
    std = jnp.sqrt(masked_mean(jnp.square(centered), valid))
    out = centered / (std + eps)
    top = jnp.max(x if valid is None else jnp.where(valid, x, -jnp.inf))
    bottom = jnp.min(x if valid is None else jnp.where(valid, x, jnp.inf))
    out = jnp.where(top == bottom, 0.0, out)
    return out if valid is None else jnp.where(valid, out, 0.0)


def _per_token(per_token: ArrayLike, mask: ArrayLike | None, loss_type: str) -> tuple[Array, Array | None]:
    check_choice("loss_type", loss_type, GRPO_LOSS_TYPES)
    per_token = as_float(per_token)
    if per_token.ndim != 2:
        raise ValueError(f"per_token has shape {per_token.shape}, expected (B, T)")
    return per_token, valid_mask(mask, per_token.shape)


def token_loss_term(per_token: ArrayLike, mask: ArrayLike | None, loss_type: str = "dapo") -> LossTerm:
    """A per-token loss ``(B, T)`` as a :class:`LossTerm` of the GRPO family.

    With ``l`` the loss, ``m`` the mask, ``n_b = sum_t m[b, t]`` and
    ``T = per_token.shape[1]``, summing ``total`` and ``count`` over the
    micro-batches of a batch of ``N`` sequences gives:

    * ``"grpo"``: ``LossTerm(sum_b sum_t m*l / max(n_b, 1), B)`` -- each
      sequence's token mean, then the mean over all ``N`` sequences
      (DeepSeekMath). A sequence with no valid token contributes ``0`` and
      still counts.
    * ``"bnpo"``: ``LossTerm(sum m*l / max(sum m, 1), 1)`` -- the token mean
      of *this* (micro-)batch, as TRL defines it; under accumulation the
      micro-batch means are averaged. Use ``"dapo"`` for the whole batch.
    * ``"dr_grpo"``: ``LossTerm(sum m*l / T, B)`` -- ``sum m*l / (N * T)``, a
      constant normaliser, so no length bias (Dr. GRPO).
    * ``"dapo"``: ``LossTerm(sum m*l, sum m)`` -- the token-level mean over
      every valid token of the whole batch (DAPO's token-level policy-gradient
      loss; TRL's ``num_items_in_batch``).

    Args:
      per_token: ``(B, T)`` per-token loss.
      mask: ``(B, T)`` (or broadcastable), non-zero = valid token; ``None``: all valid.
      loss_type: one of :data:`GRPO_LOSS_TYPES` (a Python string).

    Returns:
      ``LossTerm(total, count)``, scalars (float32 or wider).

    References:
      Shao et al. 2024, "DeepSeekMath" (arXiv:2402.03300), eq. 3;
      Liu et al. 2025, "Understanding R1-Zero-Like Training" (arXiv:2503.20783);
      Yu et al. 2025, "DAPO" (arXiv:2503.14476), eq. 12.
    """
    per_token, valid = _per_token(per_token, mask, loss_type)
    batch, length = per_token.shape
    one = jnp.ones((), per_token.dtype)
    if loss_type == "grpo":
        return LossTerm(jnp.sum(masked_mean(per_token, valid, axis=1)), batch * one)
    if loss_type == "bnpo":
        return LossTerm(masked_mean(per_token, valid), one)
    if loss_type == "dr_grpo":
        return LossTerm(masked_sum(per_token, valid) / length, batch * one)
    return masked_mean_term(per_token, valid)


def aggregate_token_loss(per_token: ArrayLike, mask: ArrayLike | None, loss_type: str = "grpo") -> Array:
    """:func:`token_loss_term` reduced to a scalar, ``total / max(count, 1)``, over the batch given.

    ``"grpo"``: mean over sequences of each sequence's token mean; ``"bnpo"``
    and ``"dapo"``: mean over all valid tokens (they differ only under
    gradient accumulation, where only the :class:`LossTerm` form sees the
    whole batch); ``"dr_grpo"``: ``sum m*l / (B * T)``. Arguments and
    references as for :func:`token_loss_term`.
    """
    total, count = token_loss_term(per_token, mask, loss_type)
    return total / jnp.maximum(count, 1.0)


__all__ = [
    "GRPO_LOSS_TYPES",
    "aggregate_token_loss",
    "masked_count",
    "masked_mean",
    "masked_mean_term",
    "masked_sum",
    "normalize_advantages",
    "token_loss_term",
]
