"""Per-family defaults of ``artifex-rl train ppo|reinforce --env NAME``, and where each came from.

A gymnax environment falls into one of three families, read from its spaces
(:func:`family_of`):

``discrete``
    Flat observations, ``Discrete`` actions (CartPole, Acrobot, MountainCar,
    the bsuite and misc environments). PPO defaults: PureJaxRL's
    ``purejaxrl/ppo.py`` (the ``config`` under ``if __name__ == "__main__"``,
    CartPole-v1), which are CleanRL's classic-control settings.
``continuous``
    ``Box`` actions (Pendulum, MountainCarContinuous). PPO defaults: rejax's
    ``configs/gymnax/pendulum.yaml`` (``ppo:`` section). PureJaxRL's continuous
    PPO (``ppo_continuous_action.py``) is configured for Brax, not gymnax.
``minatar``
    Image-like observations (``ndim > 1``: the MinAtar games, ``(10, 10, C)``)
    with ``Discrete`` actions. PPO defaults: PureJaxRL's
    ``examples/brax_minatar.ipynb`` ("PPO Gymnax MinAtar", SpaceInvaders-MinAtar;
    "briefly tuned to do well on Gymnax's MinAtar environments"). Like
    PureJaxRL (``FlattenObservationWrapper``) and rejax (its ``MLP`` reshapes
    to ``(batch, -1)``), the model flattens the observation into an MLP.

REINFORCE has no published configuration in either library; its defaults are
this repository's ``cartpole-reinforce`` settings (8 envs x 256 steps, Adam
3e-3 annealed, entropy 0.01, gradient norm 1.0) with the family's network.

What we do not copy: rejax's Pendulum config normalises observations
(``normalize_observations: true``), which our rollout source does not do;
rejax clips gradients element-wise (``optax.clip``) and trains actor and
critic with separate Adam optimisers, we clip the global norm of one joint
loss's gradient (as PureJaxRL does); Adam's epsilon is PureJaxRL's 1e-5 for
every family (rejax keeps optax's 1e-8).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

#: Settings of :class:`~artifex_rl.recipes.env_runs.EnvRunSettings` per family.
#: ``log_every`` and ``steps_per_execution`` are ours (how often to log, how many
#: iterations per compiled call); everything else is the cited source's. A call
#: may span logging steps (the logs are those of one iteration per call), so the
#: discrete family runs 50 iterations (~0.3 s on a 2-core CPU) per call: against
#: 10 it measured 1.02-1.10x the CLI's env steps/s (alternated CLI runs),
#: the per-call cost of the fused runner shared by five times the iterations.
PPO_SETTINGS: dict[str, dict[str, Any]] = {
    "discrete": dict(
        total_timesteps=500_000, num_envs=4, num_steps=128, learning_rate=2.5e-4, anneal_lr=True,
        hidden=(64, 64), activation="tanh", log_every=10, steps_per_execution=50,
    ),
    "continuous": dict(
        # 100 x 100 steps = 10k per iteration, 15 iterations: log every one.
        total_timesteps=150_000, num_envs=100, num_steps=100, learning_rate=1e-3, anneal_lr=False,
        hidden=(64, 64), activation="swish", log_every=1, steps_per_execution=5,
    ),
    "minatar": dict(
        total_timesteps=10_000_000, num_envs=64, num_steps=128, learning_rate=5e-3, anneal_lr=True,
        hidden=(64, 64), activation="relu", log_every=10, steps_per_execution=10,
    ),
}

#: :class:`~artifex_rl.rl.PPOConfig` fields per family (same sources).
PPO_CONFIG: dict[str, dict[str, Any]] = {
    "discrete": dict(
        gamma=0.99, gae_lambda=0.95, clip_param=0.2, vf_coeff=0.5, entropy_coeff=0.01,
        max_grad_norm=0.5, update_epochs=4, num_minibatches=4,
    ),
    "continuous": dict(
        gamma=0.995, gae_lambda=0.95, clip_param=0.2, vf_coeff=0.5, entropy_coeff=0.0,
        max_grad_norm=10.0, update_epochs=10, num_minibatches=10,
    ),
    "minatar": dict(
        gamma=0.99, gae_lambda=0.95, clip_param=0.2, vf_coeff=0.5, entropy_coeff=0.01,
        max_grad_norm=0.5, update_epochs=4, num_minibatches=8,
    ),
}

#: REINFORCE: the network and budget of the family, the optimiser and rollout of cartpole-reinforce.
_REINFORCE_ROLLOUT = dict(num_envs=8, num_steps=256, learning_rate=3e-3, anneal_lr=True,
                          log_every=10, steps_per_execution=10)
REINFORCE_CONFIG: dict[str, Any] = dict(gamma=0.99, entropy_coeff=0.01, max_grad_norm=1.0)

SOURCES: dict[str, str] = {
    "discrete": "PureJaxRL purejaxrl/ppo.py (__main__ config, CartPole-v1)",
    "continuous": "rejax configs/gymnax/pendulum.yaml (ppo section; observation normalisation not copied)",
    "minatar": "PureJaxRL examples/brax_minatar.ipynb (PPO Gymnax MinAtar config, SpaceInvaders-MinAtar)",
    "reinforce": "ours: the cartpole-reinforce settings (neither PureJaxRL nor rejax has REINFORCE)",
}

FAMILIES = tuple(PPO_SETTINGS)
ALGORITHMS = ("ppo", "reinforce")


def family_of(env_name: str) -> str:
    """``"discrete"``, ``"continuous"`` or ``"minatar"`` for a gymnax environment id.

    Raises:
      ValueError: an unknown id (listing the registered ones).
    """
    from artifex_rl.envs import action_spec, make_env

    env, env_params = make_env(env_name)
    if not action_spec(env.action_space(env_params)).discrete:
        return "continuous"
    if len(env.observation_space(env_params).shape) > 1:
        return "minatar"
    return "discrete"


@dataclasses.dataclass(frozen=True)
class EnvDefaults:
    """The resolved starting point of an environment run, before command-line overrides.

    Attributes:
      family: see :func:`family_of`.
      settings: :class:`EnvRunSettings` fields (without ``env_name``).
      config: the algorithm config's fields.
      source: where the numbers come from.
    """

    family: str
    settings: Mapping[str, Any]
    config: Mapping[str, Any]
    source: str


def defaults_for(algorithm: str, env_name: str) -> EnvDefaults:
    """The family defaults of ``algorithm`` (``"ppo"`` or ``"reinforce"``) on ``env_name``."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {list(ALGORITHMS)}")
    family = family_of(env_name)
    continuous = family == "continuous"
    policy = "gaussian" if continuous else "categorical"
    ppo_settings = PPO_SETTINGS[family]
    if algorithm == "ppo":
        return EnvDefaults(family, dict(ppo_settings), {**PPO_CONFIG[family], "policy": policy},
                           SOURCES[family])
    settings = {
        **_REINFORCE_ROLLOUT,
        "total_timesteps": ppo_settings["total_timesteps"],
        "hidden": ppo_settings["hidden"],
        "activation": ppo_settings["activation"],
    }
    return EnvDefaults(family, settings, {**REINFORCE_CONFIG, "policy": policy},
                       f"{SOURCES['reinforce']}; network: {SOURCES[family]}")
