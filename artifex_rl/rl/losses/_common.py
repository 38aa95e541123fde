"""Helpers shared by the loss modules: dtype promotion, argument and mask checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
ArrayLike = Any

#: Bound on log-ratios ``log(p / q)`` fed to ``exp``: ``exp(20) ~ 4.9e8`` is
#: comfortably finite in float32 (which overflows at ``exp(88.7)``), while any
#: ratio beyond it is far outside every trust region these losses use, so the
#: clamp changes no sane update.
MAX_LOG_RATIO = 20.0


def as_float(x: ArrayLike) -> Array:
    """``x`` as a floating array of at least float32 precision."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.float32)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_same_shape(name: str, x: ArrayLike, ref_name: str, ref: ArrayLike) -> None:
    if jnp.shape(x) != jnp.shape(ref):
        raise ValueError(
            f"{name} has shape {jnp.shape(x)}, expected {jnp.shape(ref)} (the shape of {ref_name})"
        )


def valid_mask(mask: ArrayLike | None, shape: tuple[int, ...], name: str = "mask") -> Array | None:
    """``mask`` as a boolean array broadcast to ``shape`` (or ``None``)."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    try:
        return jnp.broadcast_to(mask.astype(bool), shape)
    except ValueError:
        raise ValueError(
            f"{name} has shape {mask.shape}, expected a shape broadcastable to {shape}"
        ) from None


def select_valid(x: Array, mask: ArrayLike | None) -> Array:
    """``x`` with masked entries set to 0 (selected out, so NaN padding cannot leak)."""
    valid = valid_mask(mask, x.shape)
    return x if valid is None else jnp.where(valid, x, 0.0)
