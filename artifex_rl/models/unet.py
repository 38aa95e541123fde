"""A small conv U-Net for 8x8 images: the denoiser of diffusion and flow models.

Two resolutions (8x8 and 4x4) in the spirit of the DDPM U-Net (Ho et al.,
2020): residual blocks of GroupNorm -> SiLU -> 3x3 conv, the time/label
embedding added to every block's activations, a strided conv down, a
nearest-neighbour upsample + conv up, and a skip connection concatenated at
8x8. The output conv starts at zero, so a fresh model predicts 0 (the mean
of the noise or of the velocity target), which steadies the first steps.

Shapes: ``x (B, 8, 8, C)``, ``t (B,)`` float in ``[0, 1]`` (or a scalar),
``labels (B,)`` int in ``0..num_classes`` (``num_classes`` = null label) or
``None`` -> ``(B, 8, 8, C)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from artifex_rl.models.embeddings import Conditioning
from artifex_rl.models.images import check_images

Array = jax.Array


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ResBlock(nnx.Module):
    """``h + conv(silu(norm(conv(silu(norm(h))) + emb)))`` with a 1x1 projection when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(in_channels, num_groups=_groups(in_channels), rngs=rngs)
        self.conv1 = nnx.Conv(in_channels, out_channels, (3, 3), rngs=rngs)
        self.emb = nnx.Linear(emb_dim, out_channels, rngs=rngs)
        self.norm2 = nnx.GroupNorm(out_channels, num_groups=_groups(out_channels), rngs=rngs)
        self.conv2 = nnx.Conv(out_channels, out_channels, (3, 3), rngs=rngs)
        self.skip = (
            nnx.Conv(in_channels, out_channels, (1, 1), rngs=rngs) if in_channels != out_channels else None
        )

    def __call__(self, h: Array, emb: Array) -> Array:
        y = self.conv1(jax.nn.silu(self.norm1(h)))
        y = y + self.emb(jax.nn.silu(emb))[:, None, None, :]
        y = self.conv2(jax.nn.silu(self.norm2(y)))
        return (h if self.skip is None else self.skip(h)) + y


class DenoiserUNet(nnx.Module):
    """Conv U-Net ``(x, t, labels) -> (B, 8, 8, C)`` with classifier-free-guidance-ready labels.

    Args:
      channels: widths at 8x8 and at 4x4.
      emb_dim: width of the time/label embedding.
      num_classes: real classes (label ``num_classes`` is the null label);
        ``None``: unconditional.
      image_channels: ``C`` of the images.
      time_scale: see :class:`~artifex_rl.models.embeddings.Conditioning`.
      rngs: parameter initialisation.
    """

    def __init__(
        self,
        *,
        channels: tuple[int, int] = (32, 64),
        emb_dim: int = 64,
        num_classes: int | None = 10,
        image_channels: int = 1,
        time_scale: float = 1000.0,
        rngs: nnx.Rngs,
    ):
        channels = tuple(channels)
        if len(channels) != 2 or any(not isinstance(c, int) or c <= 0 for c in channels):
            raise ValueError(f"channels must be two positive ints (8x8 and 4x4 widths), got {channels!r}")
        c1, c2 = channels
        self.image_channels = image_channels
        self.conditioning = Conditioning(emb_dim, num_classes=num_classes, time_scale=time_scale, rngs=rngs)
        self.stem = nnx.Conv(image_channels, c1, (3, 3), rngs=rngs)
        self.down_block = ResBlock(c1, c1, emb_dim, rngs=rngs)
        self.down = nnx.Conv(c1, c2, (3, 3), strides=(2, 2), rngs=rngs)
        self.mid1 = ResBlock(c2, c2, emb_dim, rngs=rngs)
        self.mid2 = ResBlock(c2, c2, emb_dim, rngs=rngs)
        self.up = nnx.Conv(c2, c1, (3, 3), rngs=rngs)
        self.up_block = ResBlock(2 * c1, c1, emb_dim, rngs=rngs)
        self.out_norm = nnx.GroupNorm(c1, num_groups=_groups(c1), rngs=rngs)
        self.out = nnx.Conv(c1, image_channels, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs)

    @property
    def num_classes(self) -> int | None:
        return self.conditioning.num_classes

    @property
    def null_label(self) -> int | None:
        """Label index meaning "unconditional" (classifier-free guidance), ``None`` when unconditional."""
        return self.conditioning.null_label

    def __call__(self, x: Array, t: Array, labels: Array | None = None) -> Array:
        check_images(x, "x", channels=self.image_channels)
        batch = x.shape[0]
        emb = self.conditioning(t, labels, batch)
        skip = self.down_block(self.stem(x), emb)  # (B, 8, 8, c1)
        h = self.down(skip)  # (B, 4, 4, c2)
        h = self.mid2(self.mid1(h, emb), emb)
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest upsample to 8x8
        h = self.up_block(jnp.concatenate([self.up(h), skip], axis=-1), emb)
        return self.out(jax.nn.silu(self.out_norm(h)))
