"""The named environment recipes: shortcuts for ``artifex-rl train ppo|reinforce --env NAME``.

* ``cartpole-ppo`` = ``ppo --env CartPole-v1`` with the discrete family's
  defaults (PureJaxRL's CartPole settings: 4 envs x 128 steps per iteration,
  4 epochs x 4 minibatches, Adam 2.5e-4 linearly annealed to 0, clip 0.2,
  entropy 0.01, value 0.5, max grad norm 0.5, gamma 0.99, lambda 0.95).
* ``cartpole-reinforce`` = ``reinforce --env CartPole-v1``.
* ``pendulum-ppo`` = ``ppo --env Pendulum-v1`` with this repository's own
  Pendulum preset (:data:`PENDULUM_PPO`), which learns without observation
  normalisation; ``ppo --env Pendulum-v1`` uses rejax's published settings.

The command-line options of ``ppo``/``reinforce`` (``--total-timesteps``,
``--learning-rate``, ...) apply on top of a shortcut's preset; ``--env`` is
refused (the shortcut names its environment). The builders and the training
run live in :mod:`artifex_rl.recipes.env_runs` and are re-exported here.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from artifex_rl.recipes.env_runs import (
    CompileTimer,
    EnvRunSettings,
    build_ppo,
    build_reinforce,
    resolve,
    run_env,
    train,
)

#: ``pendulum-ppo``'s preset over the continuous family defaults (ours, tuned in this repo).
PENDULUM_PPO: dict[str, Any] = dict(
    total_timesteps=500_000, num_envs=16, num_steps=128, learning_rate=1e-3, anneal_lr=True,
    hidden=(64, 64), activation="tanh", log_every=10, steps_per_execution=10,
    gamma=0.95, gae_lambda=0.95, clip_param=0.2, vf_coeff=0.5, entropy_coeff=0.0,
    max_grad_norm=0.5, update_epochs=10, num_minibatches=16,
)


def run_ppo(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train cartpole-ppo``: 500k steps by default."""
    return run_env(args, "ppo", "CartPole-v1")


def run_reinforce(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train cartpole-reinforce``: Monte-Carlo policy gradient, 500k steps."""
    return run_env(args, "reinforce", "CartPole-v1")


def run_pendulum_ppo(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train pendulum-ppo``: continuous actions with the Gaussian policy, 500k steps."""
    return run_env(args, "ppo", "Pendulum-v1", preset=PENDULUM_PPO)


__all__ = [
    "PENDULUM_PPO",
    "CompileTimer",
    "EnvRunSettings",
    "build_ppo",
    "build_reinforce",
    "resolve",
    "run_env",
    "run_ppo",
    "run_pendulum_ppo",
    "run_reinforce",
    "train",
]
