"""Diagonal Gaussian policies: the model returns ``(mean, log_std)``, each ``(..., D)``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(mean: Array, log_std: Array, actions: Array) -> Array:
    """``sum_d log N(a_d; mu_d, sigma_d^2)`` over the last axis.

    ``log N = -z^2 / 2 - log sigma - log(2 pi) / 2`` with ``z = (a - mu) / sigma``.
    ``mean``, ``log_std`` and ``actions`` are ``(..., D)``; returns ``(...)``.
    """
    z = (actions - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * _LOG_2PI, axis=-1)


def gaussian_entropy(log_std: Array) -> Array:
    """``sum_d (log sigma_d + (1 + log 2 pi) / 2)``: ``(..., D) -> (...)``."""
    return jnp.sum(log_std + 0.5 * (1.0 + _LOG_2PI), axis=-1)


@dataclasses.dataclass(frozen=True)
class GaussianPolicy:
    """Diagonal Gaussian; the model returns ``(mean, log_std)``, each ``(..., D)``.

    Log-probs and entropies are summed over ``D``.

    Attributes:
      min_log_std / max_log_std: ``log_std`` is clipped to this range before
        use, so an untrained head cannot produce a zero or infinite scale.
    """

    min_log_std: float = -20.0
    max_log_std: float = 2.0

    def _split(self, output: Any) -> tuple[Array, Array]:
        if not (isinstance(output, (tuple, list)) and len(output) == 2):
            raise TypeError(
                f"GaussianPolicy expects the model to return (mean, log_std), got {type(output).__name__}"
            )
        mean, log_std = output
        log_std = jnp.broadcast_to(log_std, jnp.shape(mean))
        return mean, jnp.clip(log_std, self.min_log_std, self.max_log_std)

    def log_prob(self, output: Any, actions: Array) -> Array:
        mean, log_std = self._split(output)
        return gaussian_log_prob(mean, log_std, actions)

    def entropy(self, output: Any) -> Array:
        return gaussian_entropy(self._split(output)[1])

    def sample(self, output: Any, key: Array) -> Array:
        mean, log_std = self._split(output)
        return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)

    def mode(self, output: Any) -> Array:
        return self._split(output)[0]


__all__ = ["GaussianPolicy", "gaussian_entropy", "gaussian_log_prob"]
