"""Environment recipes: PPO and REINFORCE on gymnax CartPole-v1, PPO on Pendulum-v1.

PPO uses the standard CleanRL/PureJaxRL CartPole settings: 4 envs x 128
steps per iteration, 4 epochs x 4 minibatches, Adam 2.5e-4 linearly annealed
to 0, clip 0.2, entropy 0.01, value 0.5, max grad norm 0.5, gamma 0.99,
lambda 0.95. Each ``fit`` step is one iteration: a compiled rollout with the
current policy (the data source) followed by the compiled PPO update;
``steps_per_execution`` (default 10) of those iterations run in one compiled
call (``fit`` fuses rollout and update for a device source, see
:mod:`artifex_rl.device_source`).
"""

from __future__ import annotations

import dataclasses
import time
from argparse import Namespace
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from artifex_rl.callbacks.throughput import Throughput
from artifex_rl.envs import GymnaxRolloutSource, action_spec, make_env
from artifex_rl.events import Callback
from artifex_rl.models import ActorCritic, MLPPolicy
from artifex_rl.recipes.common import standard_callbacks, write_summary
from artifex_rl.rl import PPOConfig, PPOTrainer, REINFORCEConfig, REINFORCETrainer
from artifex_rl.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class EnvRunSettings:
    """Everything that defines an environment run besides the algorithm config."""

    env_name: str
    total_timesteps: int
    num_envs: int
    num_steps: int
    learning_rate: float
    anneal_lr: bool
    hidden: tuple[int, ...] = (64, 64)
    log_every: int = 10
    #: Iterations (rollout + update) per compiled call; see TrainerConfig.
    steps_per_execution: int = 10

    @property
    def steps_per_iteration(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def iterations(self) -> int:
        return max(1, self.total_timesteps // self.steps_per_iteration)


class CompileTimer(Callback):
    """Times the first compiled call (compilation of rollout and update included).

    ``steps_at_compile`` is the global step after that call: with
    ``steps_per_execution > 1`` the first call runs several iterations.
    """

    log_may_lag = True  # never reads metrics

    def __init__(self) -> None:
        self.compile_seconds = 0.0
        self.steps_at_compile = 0
        self._start = 0.0

    def on_train_batch_start(self, trainer, batch, step) -> None:
        if not self.compile_seconds and not self._start:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, metrics, step) -> None:
        if not self.compile_seconds:
            jax.block_until_ready(trainer.train_state)  # one sync, on the first call only
            self.compile_seconds = time.perf_counter() - self._start
            self.steps_at_compile = trainer.global_step


def _optimizer(settings: EnvRunSettings, updates_per_iteration: int) -> optax.GradientTransformation:
    lr: Any = settings.learning_rate
    if settings.anneal_lr:
        lr = optax.linear_schedule(lr, 0.0, settings.iterations * updates_per_iteration)
    return optax.adam(lr, eps=1e-5)


def _dims(env_name: str, policy: str) -> tuple[int, int]:
    """Observation size and action dimension, checked against the policy kind before any compile."""
    env, env_params = make_env(env_name)
    spec = action_spec(env.action_space(env_params))
    if spec.discrete != (policy == "categorical"):
        raise ValueError(
            f"{env_name} has action space {spec.describe()}, which a {policy!r} policy cannot act in; "
            f"use policy={'categorical' if spec.discrete else 'gaussian'!r}"
        )
    obs_dim = int(np.prod(env.observation_space(env_params).shape))
    return obs_dim, int(spec.num_actions if spec.discrete else spec.dim)


def _rollout_source(settings: EnvRunSettings, trainer: Trainer, policy: str, seed: int) -> GymnaxRolloutSource:
    return GymnaxRolloutSource(
        settings.env_name,
        trainer,
        num_envs=settings.num_envs,
        num_steps=settings.num_steps,
        policy=policy,
        seed=seed,
    )


def build_ppo(settings: EnvRunSettings, config: PPOConfig, seed: int) -> tuple[PPOTrainer, GymnaxRolloutSource]:
    """The PPO trainer and its rollout source for ``settings`` (validated before any compile)."""
    if settings.steps_per_iteration % config.num_minibatches:
        raise ValueError(
            f"num_envs * num_steps = {settings.num_envs} * {settings.num_steps} = "
            f"{settings.steps_per_iteration} is not divisible by num_minibatches={config.num_minibatches}"
        )
    obs_dim, action_dim = _dims(settings.env_name, config.policy)
    continuous = config.policy == "gaussian"
    model = ActorCritic(obs_dim, action_dim, settings.hidden, continuous=continuous, rngs=nnx.Rngs(seed))
    tx = _optimizer(settings, config.update_epochs * config.num_minibatches)
    trainer = PPOTrainer(model, tx, config)
    return trainer, _rollout_source(settings, trainer, config.policy, seed)


def build_reinforce(
    settings: EnvRunSettings, config: REINFORCEConfig, seed: int
) -> tuple[REINFORCETrainer, GymnaxRolloutSource]:
    """The REINFORCE trainer (policy-only MLP) and its rollout source."""
    obs_dim, action_dim = _dims(settings.env_name, config.policy)
    model = MLPPolicy(obs_dim, action_dim, settings.hidden, continuous=config.policy == "gaussian",
                      rngs=nnx.Rngs(seed))
    trainer = REINFORCETrainer(model, _optimizer(settings, 1), config)
    return trainer, _rollout_source(settings, trainer, config.policy, seed)


def train(
    trainer: Trainer,
    source: GymnaxRolloutSource,
    settings: EnvRunSettings,
    extra_callbacks: list[Callback] = (),
) -> dict[str, Any]:
    """Fit ``settings.iterations`` iterations and return the run summary."""
    timer = CompileTimer()
    callbacks = [timer, Throughput(settings.steps_per_iteration, "env_steps"), *extra_callbacks]
    start = time.perf_counter()
    trainer.fit(source, max_steps=settings.iterations, max_epochs=None, callbacks=callbacks)
    jax.block_until_ready(trainer.train_state)
    wall = time.perf_counter() - start
    total_steps = trainer.global_step * settings.steps_per_iteration
    run_seconds = max(wall - timer.compile_seconds, 1e-9)
    return {
        "env": settings.env_name,
        "final_episode_return": trainer.callback_metrics.get("episode_return"),
        "total_env_steps": total_steps,
        "wall_seconds": wall,
        "compile_seconds": timer.compile_seconds,
        "sps": (total_steps - timer.steps_at_compile * settings.steps_per_iteration) / run_seconds,
        "iterations": trainer.global_step,
    }


def _settings(args: Namespace, env_name: str, default_steps: int, num_envs: int, num_steps: int,
              learning_rate: float) -> EnvRunSettings:
    return EnvRunSettings(
        env_name=env_name,
        total_timesteps=args.total_timesteps or default_steps,
        num_envs=args.num_envs or num_envs,
        num_steps=num_steps,
        learning_rate=learning_rate,
        anneal_lr=True,
        log_every=args.log_every or 10,
        steps_per_execution=getattr(args, "steps_per_execution", None) or 10,
    )


def _run(args: Namespace, trainer: Trainer, source, settings: EnvRunSettings, config) -> dict[str, Any]:
    run_config = {"recipe": args.recipe, **dataclasses.asdict(settings), **config.to_dict()}
    callbacks = standard_callbacks(args, run_config=run_config, checkpoint_every=None)
    summary = train(trainer, source, settings, callbacks)
    summary.update(recipe=args.recipe, seed=args.seed)
    write_summary(args.run_dir, summary)
    return summary


def run_ppo(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train cartpole-ppo``: 500k steps by default."""
    settings = _settings(args, "CartPole-v1", 500_000, 4, 128, 2.5e-4)
    config = PPOConfig(log_every_n_steps=settings.log_every, seed=args.seed,
                       steps_per_execution=settings.steps_per_execution)
    trainer, source = build_ppo(settings, config, args.seed)
    return _run(args, trainer, source, settings, config)


def run_reinforce(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train cartpole-reinforce``: Monte-Carlo policy gradient, 500k steps."""
    settings = _settings(args, "CartPole-v1", 500_000, 8, 256, 3e-3)
    config = REINFORCEConfig(gamma=0.99, entropy_coeff=0.01, log_every_n_steps=settings.log_every,
                             seed=args.seed, max_grad_norm=1.0,
                             steps_per_execution=settings.steps_per_execution)
    trainer, source = build_reinforce(settings, config, args.seed)
    return _run(args, trainer, source, settings, config)


def run_pendulum_ppo(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train pendulum-ppo``: continuous actions with the Gaussian policy."""
    settings = _settings(args, "Pendulum-v1", 500_000, 16, 128, 1e-3)
    config = PPOConfig(gamma=0.95, gae_lambda=0.95, entropy_coeff=0.0, update_epochs=10,
                       num_minibatches=16, policy="gaussian", log_every_n_steps=settings.log_every,
                       seed=args.seed, steps_per_execution=settings.steps_per_execution)
    trainer, source = build_ppo(settings, config, args.seed)
    return _run(args, trainer, source, settings, config)
