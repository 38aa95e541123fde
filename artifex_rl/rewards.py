"""Reward functions: a protocol and small composable wrappers.

A reward function maps a batch of samples to one scalar per sample:
``reward_fn(samples, conditions=None, **kwargs) -> (B,)``. Anything callable
with that signature qualifies (a plain function, a class with ``__call__``, a
Flax module). The wrappers here compose such functions the optax way -- each
one does one thing and wraps another::

    reward_fn = ClippedReward(
        CompositeReward([aesthetic, clip_score], weights=[0.3, 0.7]),
        min_value=-1.0,
        max_value=1.0,
    )

Every wrapper is a frozen dataclass, jittable as long as the wrapped
functions are. Trainers check a reward function's output with
:func:`validate_rewards` (shape ``(B,)``, and finite values outside ``jit``),
whose errors name the function.

This module knows no trainer: tasks and reward models import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@runtime_checkable
class RewardFunction(Protocol):
    """Scores a batch of generated samples."""

    def __call__(self, samples: Any, conditions: Any | None = None, **kwargs: Any) -> Array:
        """Rewards for ``samples``.

        Args:
          samples: the generated samples, an array ``(B, ...)`` or a pytree of
            such arrays (e.g. ``{"tokens": (B, T), "mask": (B, T)}``).
          conditions: optional conditioning (prompts, class labels, ...).

        Returns:
          ``(B,)`` float rewards.
        """
        ...


def batch_size_of(samples: Any) -> int:
    """``B``, the leading dimension of ``samples`` (of its first leaf if a pytree)."""
    leaves = jax.tree_util.tree_leaves(samples)
    if not leaves or jnp.ndim(leaves[0]) < 1:
        raise ValueError(
            "cannot read the batch size from samples: expected an array (B, ...) or a pytree whose "
            f"first leaf is one, got {type(samples).__name__}"
        )
    return int(jnp.shape(leaves[0])[0])


def _describe(reward_fn: Any) -> str:
    """A short, recognisable name for error messages."""
    text = repr(reward_fn)
    return text if len(text) <= 200 else text[:197] + "..."


def validate_rewards(rewards: Any, batch_size: int, reward_fn: Any = None, *, allow_nonfinite: bool = False) -> Array:
    """Check a reward function's output and return it as a float array.

    Checks that ``rewards`` has shape ``(batch_size,)`` and, when its values
    are concrete (not inside ``jax.jit``), that they are finite. The
    finiteness check pulls the values to the host, a device sync, so under a
    trace it is skipped and only the (static) shape is checked.

    Args:
      rewards: the output of ``reward_fn``.
      batch_size: the expected ``B``.
      reward_fn: the function that produced ``rewards``, named in errors.
      allow_nonfinite: accept NaN/inf (unscorable samples, which a trainer
        such as GRPO leaves out of its statistics) instead of raising.

    Returns:
      ``rewards`` as a floating jax array of shape ``(batch_size,)``.

    Raises:
      ValueError: naming ``reward_fn``, the shape got and the shape expected,
        or the positions of the NaN/inf values.
    """
    source = "reward" if reward_fn is None else f"reward function {_describe(reward_fn)}"
    shape = jnp.shape(rewards)
    if shape != (batch_size,):
        raise ValueError(f"{source} returned shape {shape}, expected ({batch_size},) (one reward per sample)")
    rewards = jnp.asarray(rewards)
    if not jnp.issubdtype(rewards.dtype, jnp.floating):
        rewards = rewards.astype(jnp.float32)
    if not allow_nonfinite and not isinstance(rewards, jax.core.Tracer):
        bad = np.flatnonzero(~np.isfinite(np.asarray(rewards)))
        if bad.size:
            raise ValueError(
                f"{source} returned non-finite rewards (NaN or inf) at batch positions {bad[:10].tolist()}"
                f"{' ...' if bad.size > 10 else ''}"
            )
    return rewards


class RewardFunctionError(RuntimeError):
    """A user's reward function raised; the message names the function (and the step when known).

    The original exception is chained as ``__cause__``.
    """


def reward_name(reward_fn: Any) -> str:
    """The reward function's name: ``__qualname__`` of a function, else its class name."""
    name = getattr(reward_fn, "__qualname__", None) or getattr(reward_fn, "__name__", None)
    return name if isinstance(name, str) else type(reward_fn).__name__


def call_reward(reward_fn: Any, samples: Any, conditions: Any = None, *, step: int | None = None, **kwargs: Any) -> Array:
    """``reward_fn(samples, conditions, **kwargs)``, checked, with unscorable samples as NaN.

    A ``None`` for a sample (a list/tuple/object-array output) becomes NaN:
    the sample cannot be scored and a trainer leaves it out (GRPO gives it
    advantage 0). Non-finite rewards are accepted (``allow_nonfinite``); the
    shape must be ``(B,)``.

    Raises:
      RewardFunctionError: the reward function raised; names it (and ``step``).
      ValueError: a wrong shape, naming the function.
    """
    try:
        rewards = reward_fn(samples, conditions, **kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised with the function's name
        if type(exc).__name__ == "RewardNotJittableError" or isinstance(exc, jax.errors.JAXTypeError):
            raise  # a trace-time signal, not the user's failure
        at = f"at step {step}: " if step is not None else ""
        raise RewardFunctionError(
            f"{at}reward function {reward_name(reward_fn)} ({_describe(reward_fn)}) raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(rewards, (list, tuple)) or (isinstance(rewards, np.ndarray) and rewards.dtype == object):
        rewards = np.asarray([np.nan if r is None else float(r) for r in rewards], np.float32)
    return validate_rewards(rewards, batch_size_of(samples), reward_fn, allow_nonfinite=True)


@dataclasses.dataclass(frozen=True)
class ConstantReward:
    """The same reward ``value`` for every sample (tests and baselines).

    ``B`` is read from ``samples``: its leading dimension, or that of its
    first leaf when ``samples`` is a pytree.
    """

    value: float

    def __call__(self, samples: Any, conditions: Any | None = None, **kwargs: Any) -> Array:
        return jnp.full((batch_size_of(samples),), self.value, jnp.float32)


@dataclasses.dataclass(frozen=True)
class CompositeReward:
    """Weighted sum ``sum_i w_i * reward_fns[i](samples)``.

    Attributes:
      reward_fns: the component rewards (at least one).
      weights: one weight per component; ``None``: all ``1.0``.
    """

    reward_fns: Sequence[RewardFunction]
    weights: Sequence[float] | None = None

    def __post_init__(self) -> None:
        fns = tuple(self.reward_fns)
        if not fns:
            raise ValueError("CompositeReward needs at least one reward function")
        weights = (1.0,) * len(fns) if self.weights is None else tuple(self.weights)
        if len(weights) != len(fns):
            raise ValueError(
                f"CompositeReward got {len(fns)} reward_fns but {len(weights)} weights; expected one weight each"
            )
        # Tuples keep the frozen dataclass hashable and immune to later edits of the caller's lists.
        object.__setattr__(self, "reward_fns", fns)
        object.__setattr__(self, "weights", weights)

    def __call__(self, samples: Any, conditions: Any | None = None, **kwargs: Any) -> Array:
        batch_size = batch_size_of(samples)
        total = jnp.zeros((batch_size,), jnp.float32)
        for fn, weight in zip(self.reward_fns, self.weights, strict=True):
            # Validate each part so a bad component is named, not the composite.
            total = total + weight * validate_rewards(fn(samples, conditions, **kwargs), batch_size, fn)
        return total


@dataclasses.dataclass(frozen=True)
class ThresholdReward:
    """Binarise a reward: ``above_value`` where ``reward_fn(samples) > threshold``, else ``below_value``."""

    reward_fn: RewardFunction
    threshold: float
    above_value: float = 1.0
    below_value: float = 0.0

    def __call__(self, samples: Any, conditions: Any | None = None, **kwargs: Any) -> Array:
        rewards = jnp.asarray(self.reward_fn(samples, conditions, **kwargs))
        return jnp.where(rewards > self.threshold, self.above_value, self.below_value).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ScaledReward:
    """Affine rescaling ``scale * reward_fn(samples) + offset``."""

    reward_fn: RewardFunction
    scale: float
    offset: float = 0.0

    def __call__(self, samples: Any, conditions: Any | None = None, **kwargs: Any) -> Array:
        return self.scale * jnp.asarray(self.reward_fn(samples, conditions, **kwargs)) + self.offset


@dataclasses.dataclass(frozen=True)
class ClippedReward:
    """``clip(reward_fn(samples), min_value, max_value)``."""

    reward_fn: RewardFunction
    min_value: float
    max_value: float

    def __post_init__(self) -> None:
        if self.min_value > self.max_value:
            raise ValueError(
                f"ClippedReward needs min_value <= max_value, got min_value={self.min_value}, "
                f"max_value={self.max_value}"
            )

    def __call__(self, samples: Any, conditions: Any | None = None, **kwargs: Any) -> Array:
        return jnp.clip(
            jnp.asarray(self.reward_fn(samples, conditions, **kwargs)), self.min_value, self.max_value
        )


__all__ = [
    "ClippedReward",
    "CompositeReward",
    "ConstantReward",
    "RewardFunction",
    "RewardFunctionError",
    "ScaledReward",
    "ThresholdReward",
    "batch_size_of",
    "call_reward",
    "reward_name",
    "validate_rewards",
]
