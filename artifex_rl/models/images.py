"""Input checks shared by the 8x8 image models."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_images(x: jax.Array, name: str = "x", size: int = 8, channels: int = 1) -> None:
    """Raise a ValueError naming ``name`` unless ``x`` is ``(B, size, size, channels)`` floating point.

    Runs at trace time (shapes and dtypes are static), so it costs nothing inside ``jit``.
    """
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 4 or shape[1:] != (size, size, channels):
        raise ValueError(f"{name} must have shape (B, {size}, {size}, {channels}), got {shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point (images in [-1, 1]), got dtype {x.dtype}")
