"""A tiny MLP denoiser ``(x (B, 8, 8, 1), t (B,), labels (B,) | None)`` for fast diffusion/flow tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from artifex_rl.models.images import check_images


class TinyDenoiser(nnx.Module):
    """``MLP(concat(x, t, label embedding))`` with the U-Net's ``num_classes``/``null_label`` attributes."""

    def __init__(self, num_classes: int | None = 10, hidden: int = 32, *, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.null_label = num_classes
        self.image_channels = 1
        self.embed = nnx.Embed(num_classes + 1, 8, rngs=rngs) if num_classes is not None else None
        self.l1 = nnx.Linear(64 + 1 + 8, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, 64, rngs=rngs)

    def __call__(self, x, t, labels=None):
        check_images(x, "x")
        b = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
        if self.embed is None:
            emb = jnp.zeros((b, 8))
        else:
            labels = jnp.full((b,), self.null_label, jnp.int32) if labels is None else labels
            emb = self.embed(labels)
        h = jnp.concatenate([x.reshape(b, 64), t[:, None], emb], axis=-1)
        return self.l2(jax.nn.silu(self.l1(h))).reshape(b, 8, 8, 1)


def digit_batches(n: int, batch_size: int = 16, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` batches of random "images" in [-1, 1] with labels 0..9."""
    rng = np.random.default_rng(seed)
    return [
        {
            "images": rng.uniform(-1, 1, (batch_size, 8, 8, 1)).astype(np.float32),
            "labels": rng.integers(0, 10, batch_size).astype(np.int32),
        }
        for _ in range(n)
    ]
