"""The :class:`PolicyHead` protocol and the head registry."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

from artifex_rl.distributions.categorical import CategoricalPolicy
from artifex_rl.distributions.chain import PreferenceLikelihood, TrajectoryPolicy
from artifex_rl.distributions.gaussian import GaussianPolicy
from artifex_rl.distributions.tokens import TokenPolicy

Array = jax.Array


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


_BY_NAME: dict[str, type] = {
    "categorical": CategoricalPolicy,
    "gaussian": GaussianPolicy,
    "tokens": TokenPolicy,
}


def get_policy_head(policy: Any) -> Any:
    """Return a policy head from its name (``categorical``/``gaussian``/``tokens``) or as given.

    A :class:`~artifex_rl.distributions.chain.TrajectoryPolicy` (a sampler's
    chain, e.g. a diffusion model's) or a
    :class:`~artifex_rl.distributions.chain.PreferenceLikelihood` (Diffusion-DPO)
    is returned as given too.
    """
    if isinstance(policy, str):
        try:
            return _BY_NAME[policy]()
        except KeyError:
            raise ValueError(
                f"unknown policy {policy!r}; expected one of {sorted(_BY_NAME)} or a PolicyHead"
            ) from None
    if not isinstance(policy, (PolicyHead, TrajectoryPolicy, PreferenceLikelihood)):
        raise TypeError(
            f"policy must be a name, an object with log_prob/entropy/sample (a PolicyHead) or a "
            f"TrajectoryPolicy (rollout/training_steps/score/kl/entropy), got {type(policy).__name__}"
        )
    return policy


__all__ = ["PolicyHead", "get_policy_head"]
