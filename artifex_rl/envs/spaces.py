"""What a policy must output to act in a gymnax environment."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    """An environment's action space, reduced to what a rollout needs.

    Attributes:
      discrete: integer actions in ``[0, num_actions)`` (else a real vector).
      num_actions: ``A`` for discrete spaces; ``None`` otherwise.
      shape: the action shape the *environment* takes per env: ``()`` for
        discrete, ``(D,)`` (or ``()`` for a scalar Box) for continuous.
      dim: ``D``, the last axis of a Gaussian policy's mean (1 for a scalar Box).
      low / high: bounds that continuous actions are clipped to before the
        environment sees them (the stored action stays unclipped, so its
        log-prob is the one the policy actually sampled).
    """

    discrete: bool
    num_actions: int | None
    shape: tuple[int, ...]
    dim: int
    low: Any = None
    high: Any = None

    def describe(self) -> str:
        if self.discrete:
            return f"Discrete({self.num_actions})"
        return f"Box(shape={self.shape})"


def action_spec(space: Any) -> ActionSpec:
    """Read a gymnax action space (``Discrete`` or ``Box``) into an :class:`ActionSpec`."""
    if isinstance(space, spaces.Discrete):
        return ActionSpec(discrete=True, num_actions=int(space.n), shape=(), dim=int(space.n))
    if isinstance(space, spaces.Box):
        shape = tuple(int(d) for d in space.shape)
        if len(shape) > 1:
            raise ValueError(f"only flat Box action spaces are supported, got shape {shape}")
        dim = shape[0] if shape else 1
        # Bounds become compile-time constants; numpy keeps them off the device here.
        low = np.broadcast_to(np.asarray(space.low, np.float32), shape or (1,))
        high = np.broadcast_to(np.asarray(space.high, np.float32), shape or (1,))
        return ActionSpec(discrete=False, num_actions=None, shape=shape, dim=dim, low=low, high=high)
    raise ValueError(f"unsupported action space {type(space).__name__}; expected gymnax Discrete or Box")


def to_env_action(spec: ActionSpec, actions: jnp.ndarray) -> jnp.ndarray:
    """Turn policy actions ``(N,)`` / ``(N, D)`` into what ``env.step_env`` takes per env."""
    if spec.discrete:
        return actions.astype(jnp.int32)
    clipped = jnp.clip(actions, spec.low, spec.high)
    # A scalar Box takes a () action; the Gaussian head works on a trailing axis of 1.
    return clipped[..., 0] if spec.shape == () else clipped
