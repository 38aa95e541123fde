"""An MLP-Mixer denoiser for 8x8 images: matmuls only, so cheap on CPU and inside ``lax.scan``.

MLP-Mixer (Tolstikhin et al., 2021) on 2x2 patches: the 8x8 image becomes 16
tokens of ``4 * C`` values, embedded to ``dim``; each block mixes across
tokens (an MLP over the 16 positions) and then across channels, both
pre-LayerNorm residual MLPs, with the time/label embedding added to the tokens
before each block. The output projection starts at zero (a fresh model
predicts 0).

Shapes: ``x (B, 8, 8, C)``, ``t (B,)`` float in ``[0, 1]`` (or a scalar),
``labels (B,)`` int in ``0..num_classes`` (``num_classes`` = null label) or
``None`` -> ``(B, 8, 8, C)``.
"""

from __future__ import annotations

import jax
from flax import nnx

from artifex_rl.models.embeddings import Conditioning
from artifex_rl.models.images import check_images

Array = jax.Array

_PATCH = 2
_SIZE = 8
_TOKENS = (_SIZE // _PATCH) ** 2


def patchify(x: Array) -> Array:
    """``(B, 8, 8, C)`` -> ``(B, 16, 4 C)``: row-major 2x2 patches."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // _PATCH, _PATCH, w // _PATCH, _PATCH, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // _PATCH) * (w // _PATCH), _PATCH * _PATCH * c)


def unpatchify(tokens: Array, channels: int) -> Array:
    """Inverse of :func:`patchify`: ``(B, 16, 4 C)`` -> ``(B, 8, 8, C)``."""
    b = tokens.shape[0]
    side = _SIZE // _PATCH
    x = tokens.reshape(b, side, side, _PATCH, _PATCH, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, _SIZE, _SIZE, channels)


class MixerBlock(nnx.Module):
    """Token mixing then channel mixing, each ``h + MLP(LayerNorm(h))``; ``h`` is ``(B, T, D)``."""

    def __init__(self, dim: int, tokens: int, token_hidden: int, channel_hidden: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.token_in = nnx.Linear(tokens, token_hidden, rngs=rngs)
        self.token_out = nnx.Linear(token_hidden, tokens, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.channel_in = nnx.Linear(dim, channel_hidden, rngs=rngs)
        self.channel_out = nnx.Linear(channel_hidden, dim, rngs=rngs)

    def __call__(self, h: Array) -> Array:
        y = self.norm1(h).swapaxes(1, 2)  # (B, D, T): the MLP runs along the tokens
        h = h + self.token_out(jax.nn.gelu(self.token_in(y))).swapaxes(1, 2)
        return h + self.channel_out(jax.nn.gelu(self.channel_in(self.norm2(h))))


class DenoiserMixer(nnx.Module):
    """MLP-Mixer ``(x, t, labels) -> (B, 8, 8, C)`` with classifier-free-guidance-ready labels.

    Args:
      dim: token width.
      depth: number of mixer blocks.
      token_hidden: hidden width of the token-mixing MLPs.
      channel_hidden: hidden width of the channel-mixing MLPs (default ``2 * dim``).
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
        dim: int = 128,
        depth: int = 4,
        token_hidden: int = 64,
        channel_hidden: int | None = None,
        emb_dim: int = 64,
        num_classes: int | None = 10,
        image_channels: int = 1,
        time_scale: float = 1000.0,
        rngs: nnx.Rngs,
    ):
        for name, value in (("dim", dim), ("depth", depth), ("token_hidden", token_hidden)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        channel_hidden = 2 * dim if channel_hidden is None else channel_hidden
        patch_dim = _PATCH * _PATCH * image_channels
        self.image_channels = image_channels
        self.conditioning = Conditioning(emb_dim, num_classes=num_classes, time_scale=time_scale, rngs=rngs)
        self.embed = nnx.Linear(patch_dim, dim, rngs=rngs)
        self.position = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (_TOKENS, dim)))
        self.emb_proj = nnx.List([nnx.Linear(emb_dim, dim, rngs=rngs) for _ in range(depth)])
        self.blocks = nnx.List(
            [MixerBlock(dim, _TOKENS, token_hidden, channel_hidden, rngs=rngs) for _ in range(depth)]
        )
        self.out_norm = nnx.LayerNorm(dim, rngs=rngs)
        self.out = nnx.Linear(dim, patch_dim, kernel_init=nnx.initializers.zeros, rngs=rngs)

    @property
    def num_classes(self) -> int | None:
        return self.conditioning.num_classes

    @property
    def null_label(self) -> int | None:
        """Label index meaning "unconditional" (classifier-free guidance), ``None`` when unconditional."""
        return self.conditioning.null_label

    def __call__(self, x: Array, t: Array, labels: Array | None = None) -> Array:
        check_images(x, "x", channels=self.image_channels)
        emb = jax.nn.silu(self.conditioning(t, labels, x.shape[0]))
        h = self.embed(patchify(x)) + self.position[...]
        for proj, block in zip(self.emb_proj, self.blocks, strict=True):
            h = block(h + proj(emb)[:, None, :])
        return unpatchify(self.out(self.out_norm(h)), self.image_channels)
