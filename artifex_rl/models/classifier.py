"""A small conv classifier for 8x8 digits: the evaluation network of the generative runs.

Its penultimate layer is deliberately small (``num_features=32``): the
classifier Fréchet distance (:mod:`artifex_rl.metrics`) estimates a covariance
of that size from 500 samples, which needs far fewer samples than Inception's
2,048 features do in FID (Heusel et al., 2017).

Shapes: images ``(B, 8, 8, 1)`` float in ``[-1, 1]`` (NHWC);
``features(x)`` -> ``(B, num_features)``; ``__call__(x)`` -> logits ``(B, num_classes)``.
"""

from __future__ import annotations

import jax
from flax import nnx

from artifex_rl.models.images import check_images

Array = jax.Array


class DigitClassifier(nnx.Module):
    """Three 3x3 convs (8x8 -> 4x4 -> 2x2) -> ``num_features`` ReLU features -> logits.

    Args:
      width: channels of the first conv; the strided convs use ``2 * width``.
      num_features: size of the penultimate layer read by :meth:`features`.
      num_classes: number of logits.
      rngs: parameter initialisation.
    """

    def __init__(self, *, width: int = 16, num_features: int = 32, num_classes: int = 10, rngs: nnx.Rngs):
        for name, value in (("width", width), ("num_features", num_features), ("num_classes", num_classes)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_features = num_features
        self.num_classes = num_classes
        self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (3, 3), strides=(2, 2), rngs=rngs)
        self.conv3 = nnx.Conv(2 * width, 2 * width, (3, 3), strides=(2, 2), rngs=rngs)
        self.hidden = nnx.Linear(2 * 2 * 2 * width, num_features, rngs=rngs)
        self.head = nnx.Linear(num_features, num_classes, rngs=rngs)

    def features(self, x: Array) -> Array:
        """Penultimate activations ``(B, num_features)`` of images ``(B, 8, 8, 1)``."""
        check_images(x)
        h = jax.nn.relu(self.conv1(x))
        h = jax.nn.relu(self.conv2(h))
        h = jax.nn.relu(self.conv3(h))
        return jax.nn.relu(self.hidden(h.reshape(h.shape[0], -1)))

    def __call__(self, x: Array) -> Array:
        """Class logits ``(B, num_classes)`` of images ``(B, 8, 8, 1)``."""
        return self.head(self.features(x))
