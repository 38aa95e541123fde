"""Time and class-label conditioning shared by the 8x8 denoisers (diffusion and flow).

* Time: the sinusoidal embedding of the Transformer (Vaswani et al., 2017) as
  used by DDPM (Ho et al., 2020), of ``t * time_scale`` with ``t`` in ``[0, 1]``
  (diffusion step ``k`` of ``T`` is ``t = k / T``), followed by a small MLP.
* Labels: a table of ``num_classes + 1`` vectors; the last row is the **null
  label** (index ``num_classes``) of classifier-free guidance (Ho & Salimans,
  2022): a trainer drops labels to it with some probability, and a sampler
  mixes the conditional and null predictions. ``labels=None`` means "all null".
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def sinusoidal_embedding(t: Array, dim: int, max_period: float = 10_000.0) -> Array:
    """``(B,)`` -> ``(B, dim)``: ``[cos(t w_i), sin(t w_i)]`` with ``w_i = max_period^(-i / (dim/2))``."""
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * frequencies[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class Conditioning(nnx.Module):
    """``(t (B,), labels (B,) | None) -> (B, dim)``: time MLP embedding plus the label's vector.

    Args:
      dim: embedding width.
      num_classes: number of real classes; ``None`` for an unconditional model
        (then ``labels`` must be ``None``).
      time_scale: ``t`` is multiplied by it before the sinusoids, so that
        ``t`` in ``[0, 1]`` spans the frequencies as integer steps ``0..1000`` would.
      rngs: parameter initialisation.
    """

    def __init__(self, dim: int, *, num_classes: int | None = 10, time_scale: float = 1000.0, rngs: nnx.Rngs):
        if not isinstance(dim, int) or dim <= 0 or dim % 2:
            raise ValueError(f"embedding dim must be a positive even int, got {dim!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes <= 0):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        self.dim = dim
        self.num_classes = num_classes
        self.time_scale = time_scale
        self.time_in = nnx.Linear(dim, dim, rngs=rngs)
        self.time_out = nnx.Linear(dim, dim, rngs=rngs)
        self.label_table = nnx.Embed(num_classes + 1, dim, rngs=rngs) if num_classes is not None else None

    @property
    def null_label(self) -> int | None:
        """The index of the "no label" row (``num_classes``), or ``None`` for an unconditional model."""
        return self.num_classes

    def __call__(self, t: Array, labels: Array | None, batch: int) -> Array:
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (batch,))
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},) like x, got {t.shape}")
        emb = self.time_out(jax.nn.silu(self.time_in(sinusoidal_embedding(t * self.time_scale, self.dim))))
        if self.label_table is None:
            if labels is not None:
                raise ValueError("labels were given to an unconditional model (num_classes=None)")
            return emb
        if labels is None:
            labels = jnp.full((batch,), self.num_classes, jnp.int32)
        labels = jnp.asarray(labels)
        if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(
                f"labels must be integers of shape ({batch},) (0..{self.num_classes - 1}, or "
                f"{self.num_classes} for the null label), got {labels.dtype} {labels.shape}"
            )
        return emb + self.label_table(labels)
