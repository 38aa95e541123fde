"""An MLP energy function for 8x8 images (an energy-based model, Du & Mordatch, 2019).

``E(x)``: images ``(B, 8, 8, C)`` -> energies ``(B,)``; low energy = likely,
``p(x) ∝ exp(-E(x))``. Sampling runs Langevin dynamics,
``x <- x - (step / 2) ∇_x E(x) + sqrt(step) ε``, i.e. a ``lax.scan`` over
gradient evaluations of this network. That is why it is an MLP: on XLA:CPU a
conv net's gradient inside a rolled ``lax.scan`` runs about 16x slower than
under plain ``jit`` (jax#12868), while dense layers do not suffer. The
activation is SiLU (smooth: Langevin steps follow ``∇_x E``, which a ReLU net
makes piecewise constant).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from artifex_rl.models.images import check_images

Array = jax.Array


class EnergyMLP(nnx.Module):
    """``x (B, 8, 8, C) -> E(x) (B,)``: flatten, SiLU MLP, linear scalar head.

    Args:
      hidden: widths of the hidden layers.
      image_channels: ``C``.
      rngs: parameter initialisation.
    """

    def __init__(self, *, hidden: Sequence[int] = (256, 256), image_channels: int = 1, rngs: nnx.Rngs):
        hidden = tuple(hidden)
        if not hidden or any(not isinstance(h, int) or h <= 0 for h in hidden):
            raise ValueError(f"hidden must be a non-empty sequence of positive ints, got {hidden!r}")
        self.image_channels = image_channels
        widths = (8 * 8 * image_channels, *hidden)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )
        self.head = nnx.Linear(hidden[-1], 1, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        check_images(x, "x", channels=self.image_channels)
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            h = jax.nn.silu(layer(h))
        return self.head(h)[:, 0]
