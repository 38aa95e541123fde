"""From model output to an action distribution.

A policy head is a small stateless object that knows how to read a model's raw
output as a distribution: ``log_prob``, ``entropy`` and ``sample``. Trainers
and rollout sources take one as a setting, so the same PPO code drives a
discrete CartPole policy, a Gaussian latent policy or a language model.

Three heads cover the seeds' use cases:

* :class:`CategoricalPolicy` -- discrete actions; the model returns logits
  ``(..., A)`` and actions are integers ``(...)``.
* :class:`GaussianPolicy` -- continuous actions; the model returns
  ``(mean, log_std)``, each ``(..., D)``, a diagonal Gaussian. Log-probs and
  entropies are summed over ``D``.
* :class:`TokenPolicy` -- sequences; a causal LM returns logits ``(B, T, V)``
  for tokens ``(B, T)``: position ``t`` predicts token ``t + 1``. Log-probs are
  per token ``(B, T)`` and aligned with the *token* they score (position 0,
  which nothing predicts, gets 0), so a completion mask over the token array
  selects exactly the scored completion tokens.

These are written out rather than taken from distrax: each is a few lines of
``jax.nn.log_softmax`` arithmetic, and keeping them here avoids pulling
TensorFlow Probability's JAX substrate into every install.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

Array = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)


def _entropy_from_log_probs(logp: Array) -> Array:
    """``-sum p log p`` over the last axis, finite in value and gradient at ``-inf`` logits."""
    p = jnp.exp(logp)
    # Zero logp where p == 0 *before* multiplying: selecting 0 * -inf out
    # afterwards still leaves a NaN gradient.
    return -jnp.sum(p * jnp.where(p > 0, logp, 0.0), axis=-1)


@runtime_checkable
class PolicyHead(Protocol):
    """Reads a model's output as a distribution over actions."""

    def log_prob(self, output: Any, actions: Array) -> Array:
        """Log-probability of ``actions`` under the distribution ``output``."""
        ...

    def entropy(self, output: Any) -> Array:
        """Entropy of the distribution ``output``."""
        ...

    def sample(self, output: Any, key: Array) -> Array:
        """Draw actions from the distribution ``output``."""
        ...


@dataclasses.dataclass(frozen=True)
class CategoricalPolicy:
    """Discrete actions from logits ``(..., A)``; actions are ints ``(...)``."""

    def log_prob(self, output: Array, actions: Array) -> Array:
        logp = jax.nn.log_softmax(output, axis=-1)
        return jnp.take_along_axis(logp, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def entropy(self, output: Array) -> Array:
        return _entropy_from_log_probs(jax.nn.log_softmax(output, axis=-1))

    def sample(self, output: Array, key: Array) -> Array:
        return jax.random.categorical(key, output, axis=-1)

    def mode(self, output: Array) -> Array:
        return jnp.argmax(output, axis=-1)


@dataclasses.dataclass(frozen=True)
class GaussianPolicy:
    """Diagonal Gaussian; the model returns ``(mean, log_std)``, each ``(..., D)``.

    Attributes:
      min_log_std / max_log_std: ``log_std`` is clipped to this range before
        use, so an untrained head cannot produce a zero or infinite scale.
    """

    min_log_std: float = -20.0
    max_log_std: float = 2.0

    def _split(self, output: Any) -> tuple[Array, Array]:
        if not (isinstance(output, (tuple, list)) and len(output) == 2):
            raise TypeError(
                "GaussianPolicy expects the model to return (mean, log_std), "
                f"got {type(output).__name__}"
            )
        mean, log_std = output
        log_std = jnp.broadcast_to(log_std, jnp.shape(mean))
        return mean, jnp.clip(log_std, self.min_log_std, self.max_log_std)

    def log_prob(self, output: Any, actions: Array) -> Array:
        mean, log_std = self._split(output)
        z = (actions - mean) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * z**2 - log_std - 0.5 * _LOG_2PI, axis=-1)

    def entropy(self, output: Any) -> Array:
        _, log_std = self._split(output)
        return jnp.sum(log_std + 0.5 * (1.0 + _LOG_2PI), axis=-1)

    def sample(self, output: Any, key: Array) -> Array:
        mean, log_std = self._split(output)
        return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)

    def mode(self, output: Any) -> Array:
        return self._split(output)[0]


def token_log_probs(logits: Array, tokens: Array) -> Array:
    """Per-token log-probs of ``tokens`` under next-token ``logits``.

    Args:
      logits: ``(B, T, V)``; ``logits[:, t]`` is the distribution of token ``t + 1``.
      tokens: ``(B, T)`` integer tokens.

    Returns:
      ``(B, T)`` float: entry ``t`` is ``log p(tokens[:, t] | tokens[:, :t])``
      for ``t >= 1``; entry 0 (the first token, predicted by nothing) is 0.
    """
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    scored = jnp.take_along_axis(logp, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.pad(scored, ((0, 0), (1, 0)))


def token_entropies(logits: Array) -> Array:
    """Entropy of each next-token distribution, aligned like :func:`token_log_probs`.

    Args:
      logits: ``(B, T, V)``.

    Returns:
      ``(B, T)``: entry ``t`` is the entropy of the distribution that produced
      token ``t`` (entry 0 is 0).
    """
    ent = _entropy_from_log_probs(jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1))
    return jnp.pad(ent, ((0, 0), (1, 0)))


@dataclasses.dataclass(frozen=True)
class TokenPolicy:
    """Causal-LM head: logits ``(B, T, V)`` score tokens ``(B, T)`` per position."""

    def log_prob(self, output: Array, actions: Array) -> Array:
        return token_log_probs(output, actions)

    def entropy(self, output: Array) -> Array:
        return token_entropies(output)

    def sample(self, output: Array, key: Array) -> Array:
        # Samples the token that follows the last position.
        return jax.random.categorical(key, output[:, -1], axis=-1)


_BY_NAME: dict[str, type] = {
    "categorical": CategoricalPolicy,
    "gaussian": GaussianPolicy,
    "tokens": TokenPolicy,
}


def get_policy_head(policy: str | PolicyHead) -> PolicyHead:
    """Return a policy head from its name (``categorical``/``gaussian``/``tokens``) or as given."""
    if isinstance(policy, str):
        try:
            return _BY_NAME[policy]()
        except KeyError:
            raise ValueError(
                f"unknown policy {policy!r}; expected one of {sorted(_BY_NAME)} or a PolicyHead"
            ) from None
    if not isinstance(policy, PolicyHead):
        raise TypeError(
            f"policy must be a name or an object with log_prob/entropy/sample, got {type(policy).__name__}"
        )
    return policy
