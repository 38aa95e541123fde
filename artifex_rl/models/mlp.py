"""Small MLP policies for control tasks (CartPole, Pendulum, ...).

Both models follow the PPO initialisation recipe used by CleanRL and
PureJaxRL, which matters more than it looks for PPO on classic control:

* orthogonal kernels with gain ``sqrt(2)`` in the hidden layers (keeps the
  activations' scale through tanh/relu stacks),
* gain ``0.01`` on the policy head, so the initial policy is close to uniform
  (discrete) or centred on zero (continuous) and explores evenly,
* gain ``1.0`` on the value head,
* zero biases everywhere.

Shapes: observations are ``(..., obs_dim)`` with any number of leading batch
axes; outputs keep those axes. Image-like observations (MinAtar's
``(10, 10, C)``) are taken by passing their shape as ``obs_dim``: the model
then flattens the trailing ``len(obs_dim)`` axes, ``(..., *obs_shape) ->
(..., prod(obs_shape))``, before the first layer, exactly as PureJaxRL's
``FlattenObservationWrapper`` and rejax's ``MLP`` do for MinAtar. (A conv
torso is the other classic choice; on XLA:CPU its gradient inside PPO's
rolled epochs x minibatches scan ran about 50x slower than the flattening
MLP on Breakout-MinAtar, see ``docs/cli.md``.) Discrete policies return logits ``(..., A)``;
continuous ones return ``(mean, log_std)``, each ``(..., D)``, with a
state-independent learned ``log_std`` (the usual choice for PPO on MuJoCo-like
tasks). These outputs are what :class:`artifex_rl.rl.policies.CategoricalPolicy`
and :class:`~artifex_rl.rl.policies.GaussianPolicy` read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,  # the same function under rejax's (flax's) name
    "elu": jax.nn.elu,
}

_HIDDEN_GAIN = math.sqrt(2.0)
_POLICY_GAIN = 0.01
_VALUE_GAIN = 1.0


def _activation(name: str) -> Callable[[Array], Array]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


def _obs_shape(obs_dim: int | Sequence[int]) -> tuple[int, ...]:
    """``obs_dim`` as the trailing observation shape: ``(obs_dim,)`` for an int."""
    shape = (obs_dim,) if isinstance(obs_dim, int) and not isinstance(obs_dim, bool) else obs_dim
    try:
        shape = tuple(shape)
    except TypeError:
        shape = ()
    if not shape or any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in shape):
        raise ValueError(
            f"obs_dim must be a positive int or a shape of positive ints (image-like observations), "
            f"got {obs_dim!r}"
        )
    return shape


def _check_dims(obs_dim: int | Sequence[int], action_dim: int, hidden: Sequence[int]) -> tuple[int, ...]:
    _obs_shape(obs_dim)
    if not isinstance(action_dim, int) or action_dim <= 0:
        raise ValueError(f"action_dim must be a positive int, got {action_dim!r}")
    hidden = tuple(hidden)
    if not hidden or any(not isinstance(h, int) or h <= 0 for h in hidden):
        raise ValueError(f"hidden must be a non-empty sequence of positive ints, got {hidden!r}")
    return hidden


def _flat_obs(obs: Array, obs_shape: tuple[int, ...], model: str) -> Array:
    """``(..., *obs_shape) -> (..., prod(obs_shape))``, with an error that names the shapes."""
    # Shapes are static under jit, so this costs nothing at run time and turns a
    # dot_general shape error into one that names the observation.
    k = len(obs_shape)
    if jnp.ndim(obs) < k or tuple(jnp.shape(obs)[jnp.ndim(obs) - k :]) != obs_shape:
        want = ", ".join(str(d) for d in obs_shape)
        raise ValueError(f"{model} expects observations of shape (..., {want}), got {jnp.shape(obs)}")
    if k == 1:
        return obs
    return jnp.reshape(obs, (*jnp.shape(obs)[: jnp.ndim(obs) - k], math.prod(obs_shape)))


def _linear(in_dim: int, out_dim: int, gain: float, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        in_dim,
        out_dim,
        kernel_init=nnx.initializers.orthogonal(gain),
        bias_init=nnx.initializers.zeros_init(),
        rngs=rngs,
    )


class _Torso(nnx.Module):
    """``Linear -> activation`` repeated; maps ``(..., in_dim)`` to ``(..., hidden[-1])``."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], activation: str, rngs: nnx.Rngs):
        dims = (in_dim, *hidden)
        self.layers = nnx.List(
            [
                _linear(d_in, d_out, _HIDDEN_GAIN, rngs)
                for d_in, d_out in zip(dims[:-1], dims[1:], strict=True)
            ]
        )
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        act = _activation(self.activation)
        for layer in self.layers:
            x = act(layer(x))
        return x


class _PolicyHead(nnx.Module):
    """Logits ``(..., A)``, or ``(mean, log_std)`` each ``(..., D)`` when continuous."""

    def __init__(self, in_dim: int, action_dim: int, continuous: bool, rngs: nnx.Rngs):
        self.out = _linear(in_dim, action_dim, _POLICY_GAIN, rngs)
        self.continuous = continuous
        if continuous:
            # State-independent: exploration noise is learned, not predicted, which
            # is the stable choice for on-policy methods (log_std = 0 -> std = 1).
            self.log_std = nnx.Param(jnp.zeros((action_dim,), jnp.float32))

    def __call__(self, features: Array) -> Array | tuple[Array, Array]:
        out = self.out(features)
        if not self.continuous:
            return out
        return out, jnp.broadcast_to(self.log_std[...], out.shape)


class ActorCritic(nnx.Module):
    """Separate actor and critic MLPs over the same observation.

    Args:
      obs_dim: size of the last observation axis, or the observation shape
        (e.g. ``(10, 10, 4)``), whose trailing axes are then flattened.
      action_dim: number of discrete actions ``A`` or continuous dimensions ``D``.
      hidden: widths of the hidden layers (used for both torsos).
      continuous: Gaussian policy ``(mean, log_std)`` instead of logits.
      activation: ``"tanh"`` (the PPO default), ``"relu"``, ``"gelu"``, ``"silu"``, ``"elu"``.
      rngs: initialisation randomness.

    ``__call__(obs (..., *obs_shape)) -> (policy_output, value (...))`` where
    ``policy_output`` is logits ``(..., A)`` or ``(mean, log_std)`` each ``(..., D)``.

    The torsos are not shared: a shared torso lets the value loss (whose scale
    depends on the reward scale) push the policy features around, which is why
    the PPO references keep them apart for small control tasks.
    """

    def __init__(
        self,
        obs_dim: int | Sequence[int],
        action_dim: int,
        hidden: Sequence[int] = (64, 64),
        *,
        continuous: bool = False,
        activation: str = "tanh",
        rngs: nnx.Rngs,
    ):
        hidden = _check_dims(obs_dim, action_dim, hidden)
        _activation(activation)  # fail at construction, not at the first call
        self.obs_shape = _obs_shape(obs_dim)
        self.obs_dim = math.prod(self.obs_shape)
        self.action_dim = action_dim
        self.continuous = continuous
        self.actor_torso = _Torso(self.obs_dim, hidden, activation, rngs)
        self.actor_head = _PolicyHead(hidden[-1], action_dim, continuous, rngs)
        self.critic_torso = _Torso(self.obs_dim, hidden, activation, rngs)
        self.critic_head = _linear(hidden[-1], 1, _VALUE_GAIN, rngs)

    def __call__(self, obs: Array) -> tuple[Any, Array]:
        obs = _flat_obs(obs, self.obs_shape, "ActorCritic")
        policy_output = self.actor_head(self.actor_torso(obs))
        value = self.critic_head(self.critic_torso(obs))[..., 0]
        return policy_output, value


class MLPPolicy(nnx.Module):
    """A policy-only MLP (no value head), e.g. for REINFORCE.

    Args:
      obs_dim: size of the last observation axis, or the observation shape
        (trailing axes flattened, see :class:`ActorCritic`).
      action_dim: number of discrete actions ``A`` or continuous dimensions ``D``.
      hidden: widths of the hidden layers.
      continuous: Gaussian policy ``(mean, log_std)`` instead of logits.
      activation: see :class:`ActorCritic`.
      rngs: initialisation randomness.

    ``__call__(obs (..., *obs_shape))`` returns logits ``(..., A)`` or
    ``(mean, log_std)`` each ``(..., D)``.
    """

    def __init__(
        self,
        obs_dim: int | Sequence[int],
        action_dim: int,
        hidden: Sequence[int] = (64, 64),
        continuous: bool = False,
        *,
        activation: str = "tanh",
        rngs: nnx.Rngs,
    ):
        hidden = _check_dims(obs_dim, action_dim, hidden)
        _activation(activation)
        self.obs_shape = _obs_shape(obs_dim)
        self.obs_dim = math.prod(self.obs_shape)
        self.action_dim = action_dim
        self.continuous = continuous
        self.torso = _Torso(self.obs_dim, hidden, activation, rngs)
        self.head = _PolicyHead(hidden[-1], action_dim, continuous, rngs)

    def __call__(self, obs: Array) -> Array | tuple[Array, Array]:
        obs = _flat_obs(obs, self.obs_shape, "MLPPolicy")
        return self.head(self.torso(obs))
