"""Conv generator and discriminator for a GAN on 8x8 images (DCGAN-like, Radford et al., 2016).

* :class:`Generator`: ``z (B, latent_dim)`` -> images ``(B, 8, 8, C)`` in
  ``[-1, 1]`` (``tanh``): a linear layer to 2x2, then two "nearest upsample +
  3x3 conv" stages to 4x4 and 8x8.
* :class:`Discriminator`: images ``(B, 8, 8, C)`` -> logits ``(B,)`` (real vs
  fake; unnormalised, so the same network serves every loss type: the
  non-saturating and least-squares losses, the hinge loss, and the WGAN critic).

No batch normalisation: its batch statistics would couple the samples of a
batch, and the WGAN-GP gradient penalty (Gulrajani et al., 2017) is defined per
sample. The discriminator uses LeakyReLU(0.2) as DCGAN does; the generator
uses SiLU and LayerNorm over channels for stable early training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from artifex_rl.models.images import check_images

Array = jax.Array


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _upsample(h: Array) -> Array:
    return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)


class Generator(nnx.Module):
    """``z (B, latent_dim) -> (B, 8, 8, C)`` in ``[-1, 1]``.

    Args:
      latent_dim: size of ``z`` (sample it from ``N(0, I)``).
      width: channels at 8x8; ``2 * width`` at 2x2 and 4x4.
      image_channels: ``C``.
      rngs: parameter initialisation.
    """

    def __init__(self, latent_dim: int = 32, *, width: int = 32, image_channels: int = 1, rngs: nnx.Rngs):
        _check_positive(latent_dim=latent_dim, width=width, image_channels=image_channels)
        self.latent_dim = latent_dim
        self.width = width
        self.project = nnx.Linear(latent_dim, 2 * 2 * 2 * width, rngs=rngs)
        self.norm0 = nnx.LayerNorm(2 * width, rngs=rngs)
        self.conv1 = nnx.Conv(2 * width, 2 * width, (3, 3), rngs=rngs)  # at 4x4
        self.norm1 = nnx.LayerNorm(2 * width, rngs=rngs)
        self.conv2 = nnx.Conv(2 * width, width, (3, 3), rngs=rngs)  # at 8x8
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        self.out = nnx.Conv(width, image_channels, (3, 3), rngs=rngs)

    def __call__(self, z: Array) -> Array:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {z.shape}")
        h = self.project(z).reshape(z.shape[0], 2, 2, 2 * self.width)
        h = jax.nn.silu(self.norm0(h))
        h = jax.nn.silu(self.norm1(self.conv1(_upsample(h))))
        h = jax.nn.silu(self.norm2(self.conv2(_upsample(h))))
        return jnp.tanh(self.out(h))


class Discriminator(nnx.Module):
    """``x (B, 8, 8, C) -> (B,)`` logits: 3x3 convs 8x8 -> 4x4 -> 2x2, then a linear head.

    Args:
      width: channels at 8x8; ``2 * width`` at 4x4 and 2x2.
      image_channels: ``C``.
      rngs: parameter initialisation.
    """

    def __init__(self, *, width: int = 32, image_channels: int = 1, rngs: nnx.Rngs):
        _check_positive(width=width, image_channels=image_channels)
        self.image_channels = image_channels
        self.conv1 = nnx.Conv(image_channels, width, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (3, 3), strides=(2, 2), rngs=rngs)
        self.conv3 = nnx.Conv(2 * width, 2 * width, (3, 3), strides=(2, 2), rngs=rngs)
        self.head = nnx.Linear(2 * 2 * 2 * width, 1, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        check_images(x, "x", channels=self.image_channels)
        h = jax.nn.leaky_relu(self.conv1(x), 0.2)
        h = jax.nn.leaky_relu(self.conv2(h), 0.2)
        h = jax.nn.leaky_relu(self.conv3(h), 0.2)
        return self.head(h.reshape(h.shape[0], -1))[:, 0]
