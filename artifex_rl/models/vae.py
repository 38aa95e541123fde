"""Conv encoder and decoder for a VAE on 8x8 images (Kingma & Welling, 2014).

* :class:`ConvEncoder`: ``(B, 8, 8, C)`` -> ``(mean, log_std)``, each
  ``(B, latent_dim)``: the diagonal Gaussian ``q(z | x)``. The same pair is the
  parameterisation of a Gaussian policy, so the encoder can serve as one.
* :class:`ConvDecoder`: ``(B, latent_dim)`` -> ``(B, 8, 8, C)``: per-pixel
  Bernoulli **logits** (``output="logits"``; the targets are the grey levels
  mapped to ``[0, 1]``, ``(x + 1) / 2``) or Gaussian **means** in ``[-1, 1]``
  (``output="mean"``, a ``tanh``).

Both are 8x8 <-> 4x4 <-> 2x2 conv stacks with SiLU; the decoder upsamples by
nearest-neighbour repetition followed by a 3x3 conv (no checkerboard artefacts
of transposed convs).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from artifex_rl.models.images import check_images

Array = jax.Array

# log_std is squashed into this range: the ELBO's exp(2 log_std) stays finite early in training.
LOG_STD_MIN, LOG_STD_MAX = -6.0, 2.0


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _upsample(h: Array) -> Array:
    return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)


class ConvEncoder(nnx.Module):
    """``x (B, 8, 8, C) -> (mean, log_std)``, each ``(B, latent_dim)``; ``log_std`` in ``[-6, 2]``.

    Args:
      latent_dim: size of ``z``.
      width: channels at 8x8; ``2 * width`` at 4x4 and 2x2.
      image_channels: ``C``.
      rngs: parameter initialisation.
    """

    def __init__(self, latent_dim: int = 8, *, width: int = 32, image_channels: int = 1, rngs: nnx.Rngs):
        _check_positive(latent_dim=latent_dim, width=width, image_channels=image_channels)
        self.latent_dim = latent_dim
        self.image_channels = image_channels
        self.conv1 = nnx.Conv(image_channels, width, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (3, 3), strides=(2, 2), rngs=rngs)
        self.conv3 = nnx.Conv(2 * width, 2 * width, (3, 3), strides=(2, 2), rngs=rngs)
        self.hidden = nnx.Linear(2 * 2 * 2 * width, 4 * width, rngs=rngs)
        self.mean = nnx.Linear(4 * width, latent_dim, rngs=rngs)
        # Starts at log_std = 0 for every input: q(z|x) begins as wide as the prior.
        self.log_std = nnx.Linear(4 * width, latent_dim, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        check_images(x, "x", channels=self.image_channels)
        h = jax.nn.silu(self.conv1(x))
        h = jax.nn.silu(self.conv2(h))
        h = jax.nn.silu(self.conv3(h))
        h = jax.nn.silu(self.hidden(h.reshape(h.shape[0], -1)))
        return self.mean(h), jnp.clip(self.log_std(h), LOG_STD_MIN, LOG_STD_MAX)


class ConvDecoder(nnx.Module):
    """``z (B, latent_dim) -> (B, 8, 8, C)`` Bernoulli logits or Gaussian means (see the module doc).

    Args:
      latent_dim: size of ``z``.
      width: channels at 8x8; ``2 * width`` at 2x2 and 4x4.
      output: ``"logits"`` (raw) or ``"mean"`` (``tanh``, in ``[-1, 1]``).
      image_channels: ``C``.
      rngs: parameter initialisation.
    """

    def __init__(
        self,
        latent_dim: int = 8,
        *,
        width: int = 32,
        output: Literal["logits", "mean"] = "logits",
        image_channels: int = 1,
        rngs: nnx.Rngs,
    ):
        _check_positive(latent_dim=latent_dim, width=width, image_channels=image_channels)
        if output not in ("logits", "mean"):
            raise ValueError(f"output must be 'logits' or 'mean', got {output!r}")
        self.latent_dim = latent_dim
        self.output = output
        self.width = width
        self.hidden = nnx.Linear(latent_dim, 4 * width, rngs=rngs)
        self.project = nnx.Linear(4 * width, 2 * 2 * 2 * width, rngs=rngs)
        self.conv1 = nnx.Conv(2 * width, 2 * width, (3, 3), rngs=rngs)  # at 4x4
        self.conv2 = nnx.Conv(2 * width, width, (3, 3), rngs=rngs)  # at 8x8
        self.out = nnx.Conv(width, image_channels, (3, 3), rngs=rngs)

    def __call__(self, z: Array) -> Array:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {z.shape}")
        h = jax.nn.silu(self.hidden(z))
        h = jax.nn.silu(self.project(h)).reshape(z.shape[0], 2, 2, 2 * self.width)
        h = jax.nn.silu(self.conv1(_upsample(h)))
        h = jax.nn.silu(self.conv2(_upsample(h)))
        out = self.out(h)
        return jnp.tanh(out) if self.output == "mean" else out
