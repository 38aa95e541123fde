"""What a data source needs of the policy: a snapshot, not the trainer.

Sources that make batches with the current policy (environment rollouts,
online completions) take a *policy provider*: a zero-argument callable that
returns the current :class:`PolicySnapshot`. ``Trainer.policy_snapshot`` is
one. A source whose batches depend on the policy sets
``depends_on_policy = True``; ``fit`` then never reads it ahead of the update
(with ``steps_per_execution > 1`` it must either fuse it into the compiled
call, as a device source, or run one step per call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from flax import nnx


class PolicySnapshot(NamedTuple):
    """The policy at one moment: rebuild it with ``nnx.merge(graphdef, params, model_state)``.

    Attributes:
      graphdef: the model's static structure.
      params: the trainable variables as a plain pytree (device arrays).
      model_state: the other variables (batch stats, RNG counts, ...), a plain pytree.
    """

    graphdef: nnx.GraphDef
    params: Any
    model_state: Any

    def merge(self) -> nnx.Module:
        """The policy as an ``nnx.Module`` (a fresh object; changing it changes nothing here)."""
        return nnx.merge(self.graphdef, self.params, self.model_state)


PolicyProvider = Callable[[], PolicySnapshot]


def as_policy_provider(policy: Any) -> PolicyProvider:
    """Accept a provider callable or anything with a ``policy_snapshot()`` method (a trainer)."""
    snapshot = getattr(policy, "policy_snapshot", None)
    if callable(snapshot):
        return snapshot
    if callable(policy):
        return policy
    raise TypeError(
        "policy must be a zero-argument callable returning a PolicySnapshot, or a trainer "
        f"(an object with policy_snapshot()); got {type(policy).__name__}"
    )
