"""Rewards for generated images, in the seeds' ``RewardFunction`` form ``reward(samples, conditions) -> (B,)``.

All are ``jnp`` functions of images ``(B, H, W, C)`` in ``[-1, 1]`` (background
-1, ink +1), so they run inside a compiled RL step, and they compose with the
seeds' :class:`~artifex_rl.rewards.CompositeReward`,
:class:`~artifex_rl.rewards.ThresholdReward` and
:class:`~artifex_rl.rewards.ClippedReward`.

* :class:`DigitClassifierReward` -- the probability a digit classifier gives the
  target class: the analogue of the seeds' CLIP text-alignment reward. Train
  it with another seed and width than the evaluation classifier, so a run
  that fools its reward model shows up in the evaluation.
* :class:`InkReward` -- mean brightness mapped to ``[0, 1]`` (label-free, in the
  spirit of DDPO's compressibility reward).
* :class:`SmoothnessReward` -- minus the mean total variation (smooth strokes).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def _check_images(samples: Any, who: str) -> Array:
    images = jnp.asarray(samples)
    if images.ndim != 4:
        raise ValueError(f"{who}: samples must be images (B, H, W, C), got shape {images.shape}")
    return images.astype(jnp.float32)


class DigitClassifierReward:
    """``softmax(classifier(images))[target]``, in ``[0, 1]``.

    Args:
      classifier: ``classifier(images (B, 8, 8, 1)) -> logits (B, 10)`` (an
        ``nnx.Module``; its state is captured once, so later changes to it are
        not seen).
      target: the class to reward; ``None``: ``conditions (B,)`` give each
        sample's target (a conditional model's labels).
    """

    def __init__(self, classifier: nnx.Module, target: int | None = None):
        num_classes = getattr(classifier, "num_classes", None)
        if target is not None and (
            isinstance(target, bool) or not isinstance(target, int)
            or not 0 <= target < (num_classes if isinstance(num_classes, int) else 10**9)
        ):
            raise ValueError(f"target must be a class index in [0, {num_classes}), got {target!r}")
        self.graphdef, self.state = nnx.split(classifier)
        self.target = target
        self.__name__ = f"DigitClassifierReward(target={target})"

    def probabilities(self, samples: Any) -> Array:
        """``(B, num_classes)`` class probabilities of ``samples (B, 8, 8, 1)``."""
        images = _check_images(samples, type(self).__name__)
        return jax.nn.softmax(nnx.merge(self.graphdef, self.state)(images), axis=-1)

    def __call__(self, samples: Any, conditions: Any | None = None, **kwargs: Any) -> Array:
        probs = self.probabilities(samples)
        if self.target is not None:
            return probs[:, self.target]
        if conditions is None:
            raise ValueError(
                "DigitClassifierReward(target=None) reads each sample's target from conditions (B,), got None"
            )
        targets = jnp.asarray(conditions).astype(jnp.int32)
        if targets.shape != probs.shape[:1]:
            raise ValueError(f"conditions must be target classes of shape {probs.shape[:1]}, got {targets.shape}")
        return jnp.take_along_axis(probs, targets[:, None], axis=1)[:, 0]

    def __repr__(self) -> str:
        return self.__name__


class InkReward:
    """Mean brightness of each image mapped from ``[-1, 1]`` to ``[0, 1]`` (the fraction of ink)."""

    __name__ = "InkReward"

    def __call__(self, samples: Any, conditions: Any | None = None, **kwargs: Any) -> Array:
        images = _check_images(samples, type(self).__name__)
        return jnp.mean((jnp.clip(images, -1.0, 1.0) + 1.0) / 2.0, axis=(1, 2, 3))


class SmoothnessReward:
    """``-(mean |x[i+1, j] - x[i, j]| + mean |x[i, j+1] - x[i, j]|) / 2``: minus the total variation."""

    __name__ = "SmoothnessReward"

    def __call__(self, samples: Any, conditions: Any | None = None, **kwargs: Any) -> Array:
        images = jnp.clip(_check_images(samples, type(self).__name__), -1.0, 1.0)
        dy = jnp.mean(jnp.abs(jnp.diff(images, axis=1)), axis=(1, 2, 3))
        dx = jnp.mean(jnp.abs(jnp.diff(images, axis=2)), axis=(1, 2, 3))
        return -(dx + dy) / 2.0


__all__ = ["DigitClassifierReward", "InkReward", "SmoothnessReward"]
