"""PPO and REINFORCE on any gymnax environment: settings, builders, the training run.

``artifex-rl train ppo --env NAME`` and ``artifex-rl train reinforce --env NAME``
resolve their settings in three layers: the environment family's defaults
(:mod:`artifex_rl.recipes.env_defaults`, with their published sources), a
named recipe's preset (``cartpole-ppo``, ``pendulum-ppo``, ...) and the
options given on the command line. Each ``fit`` step is one iteration: a
compiled rollout with the current policy (the data source) followed by the
compiled update; ``steps_per_execution`` iterations run in one compiled call
(``fit`` fuses rollout and update for a device source, see
:mod:`artifex_rl.device_source`).

Image-like observations (MinAtar's ``(10, 10, C)``) are flattened by the
model (:class:`~artifex_rl.models.ActorCritic` with an observation shape), as
PureJaxRL and rejax do.
"""

from __future__ import annotations

import dataclasses
import math
import time
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from artifex_rl.callbacks.throughput import Throughput
from artifex_rl.envs import GymnaxRolloutSource, action_spec, make_env
from artifex_rl.events import Callback
from artifex_rl.models import ActorCritic, MLPPolicy
from artifex_rl.recipes.common import recipe_mesh, standard_callbacks, write_summary
from artifex_rl.recipes.env_defaults import defaults_for
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
    #: Hidden-layer activation of the MLP (see artifex_rl.models.mlp).
    activation: str = "tanh"

    def __post_init__(self) -> None:
        for name in ("total_timesteps", "num_envs", "num_steps", "log_every", "steps_per_execution"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"EnvRunSettings.{name} must be a positive int, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"EnvRunSettings.learning_rate must be > 0, got {self.learning_rate!r}")
        object.__setattr__(self, "hidden", tuple(self.hidden))

    @property
    def steps_per_iteration(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def iterations(self) -> int:
        return max(1, self.total_timesteps // self.steps_per_iteration)


#: The ``jax.monitoring`` events whose durations make up a compilation (trace, lower, compile):
#: what ``jax.jit(f).lower(...).compile()`` costs when timed ahead of time.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileClock:
    """Sums the durations of JAX's compile events (:data:`COMPILE_EVENTS`) while it listens.

    ``with CompileClock() as clock: ...`` or ``start()`` / ``stop()``;
    ``seconds`` is the total so far.
    """

    def __init__(self) -> None:
        self.seconds = 0.0

    def _on_duration(self, event: str, duration: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            self.seconds += duration

    def start(self) -> None:
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)

    def stop(self) -> None:
        try:
            jax.monitoring.unregister_event_duration_listener(self._on_duration)
        except (AssertionError, ValueError):  # not listening (stopped twice, or never started)
            pass

    def __enter__(self) -> CompileClock:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class CompileTimer(Callback):
    """Times the compilation, the first compiled call and the training.

    ``compile_seconds`` is the time JAX spent tracing, lowering and compiling
    during ``fit`` (the durations of :data:`COMPILE_EVENTS` that
    ``jax.monitoring`` reports), the figure an ahead-of-time
    ``lower().compile()`` gives. ``first_call_seconds`` is the wall time of
    the first call, which compiles and then runs ``steps_per_execution``
    iterations; ``steps_at_compile`` is the global step after it.
    ``train_end`` is when the last step finished, before the end-of-run work of
    the callbacks after this one (the metrics plot, the last checkpoint).
    """

    log_may_lag = True  # never reads metrics

    def __init__(self) -> None:
        self._clock = CompileClock()
        self.first_call_seconds = 0.0
        self.steps_at_compile = 0
        self.train_end: float | None = None
        self._start = 0.0

    @property
    def compile_seconds(self) -> float:
        return self._clock.seconds

    def on_train_begin(self, trainer: Trainer) -> None:
        self._clock.start()

    def on_train_batch_start(self, trainer, batch, step) -> None:
        if not self.first_call_seconds and not self._start:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, metrics, step) -> None:
        if not self.first_call_seconds:
            jax.block_until_ready(trainer.train_state)  # one sync, on the first call only
            self.first_call_seconds = time.perf_counter() - self._start
            self.steps_at_compile = trainer.global_step

    def on_train_end(self, trainer: Trainer) -> None:
        jax.block_until_ready(trainer.train_state)
        self.train_end = time.perf_counter()
        self._clock.stop()

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        self._clock.stop()


class LastLogged(Callback):
    """The last logged value of one metric and its step (a metric may be absent from some logs:
    ``episode_return`` is, in intervals where no episode finished)."""

    log_may_lag = True  # only records

    def __init__(self, key: str) -> None:
        self.key = key
        self.value: float | None = None
        self.step: int | None = None

    def on_log(self, trainer, metrics, step) -> None:
        if self.key in metrics:
            self.value, self.step = float(metrics[self.key]), int(step)


def _optimizer(settings: EnvRunSettings, updates_per_iteration: int) -> optax.GradientTransformation:
    lr: Any = settings.learning_rate
    if settings.anneal_lr:
        lr = optax.linear_schedule(lr, 0.0, settings.iterations * updates_per_iteration)
    return optax.adam(lr, eps=1e-5)


def _dims(env_name: str, policy: str) -> tuple[int | tuple[int, ...], int]:
    """Observation size (or shape, for image-like observations) and action dimension.

    Checked against the policy kind before anything is compiled.
    """
    env, env_params = make_env(env_name)
    spec = action_spec(env.action_space(env_params))
    if spec.discrete != (policy == "categorical"):
        raise ValueError(
            f"{env_name} has action space {spec.describe()}, which a {policy!r} policy cannot act in; "
            f"use policy={'categorical' if spec.discrete else 'gaussian'!r}"
        )
    shape = tuple(int(d) for d in env.observation_space(env_params).shape)
    obs: int | tuple[int, ...] = shape if len(shape) > 1 else math.prod(shape)
    return obs, int(spec.num_actions if spec.discrete else spec.dim)


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
    obs, action_dim = _dims(settings.env_name, config.policy)
    continuous = config.policy == "gaussian"
    model = ActorCritic(obs, action_dim, settings.hidden, continuous=continuous,
                        activation=settings.activation, rngs=nnx.Rngs(seed))
    tx = _optimizer(settings, config.update_epochs * config.num_minibatches)
    trainer = PPOTrainer(model, tx, config, mesh=recipe_mesh())
    return trainer, _rollout_source(settings, trainer, config.policy, seed)


def build_reinforce(
    settings: EnvRunSettings, config: REINFORCEConfig, seed: int
) -> tuple[REINFORCETrainer, GymnaxRolloutSource]:
    """The REINFORCE trainer (policy-only MLP) and its rollout source."""
    obs, action_dim = _dims(settings.env_name, config.policy)
    model = MLPPolicy(obs, action_dim, settings.hidden, continuous=config.policy == "gaussian",
                      activation=settings.activation, rngs=nnx.Rngs(seed))
    trainer = REINFORCETrainer(model, _optimizer(settings, 1), config, mesh=recipe_mesh())
    return trainer, _rollout_source(settings, trainer, config.policy, seed)


def train(
    trainer: Trainer,
    source: GymnaxRolloutSource,
    settings: EnvRunSettings,
    extra_callbacks: list[Callback] = (),
) -> dict[str, Any]:
    """Fit ``settings.iterations`` iterations and return the run summary.

    ``sps`` is environment steps per second from the end of the first compiled
    call (which compiles and runs ``steps_per_execution`` iterations) to the end
    of the last step (``wall_seconds`` also counts the end-of-run plot and
    checkpoint, about a second, in ``end_of_run_seconds``); when every
    iteration ran inside that call there is no such figure, so ``sps`` is
    ``None`` and ``sps_unavailable`` says why.
    """
    timer = CompileTimer()
    last_return = LastLogged("episode_return")
    callbacks = [timer, Throughput(settings.steps_per_iteration, "env_steps"), last_return, *extra_callbacks]
    start = time.perf_counter()
    trainer.fit(source, max_steps=settings.iterations, max_epochs=None, callbacks=callbacks)
    jax.block_until_ready(trainer.train_state)
    end = time.perf_counter()
    wall = end - start
    train_seconds = (timer.train_end or end) - start
    total_steps = trainer.global_step * settings.steps_per_iteration
    measured_steps = total_steps - timer.steps_at_compile * settings.steps_per_iteration
    summary: dict[str, Any] = {
        "env": settings.env_name,
        # The last logged mean return of the episodes that finished in a logging interval.
        "final_episode_return": last_return.value,
        "final_episode_return_step": last_return.step,
        "total_env_steps": total_steps,
        "wall_seconds": wall,
        "end_of_run_seconds": wall - train_seconds,
        "compile_seconds": timer.compile_seconds,
        "first_call_seconds": timer.first_call_seconds,
        "iterations": trainer.global_step,
    }
    if measured_steps > 0:
        summary["sps"] = measured_steps / max(train_seconds - timer.first_call_seconds, 1e-9)
    else:
        summary["sps"] = None
        summary["sps_unavailable"] = (
            f"all {trainer.global_step} iterations ran in the first compiled call "
            f"(steps_per_execution={trainer.config.steps_per_execution}), whose time is mostly "
            "compilation; train longer for a steady-state figure"
        )
    if last_return.value is None:
        summary["final_episode_return_unavailable"] = "no episode finished during training"
    return summary


# --------------------------------------------------------------------------------------
# The recipes behind the CLI


def resolve(
    algorithm: str,
    env_name: str,
    preset: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> tuple[EnvRunSettings, PPOConfig | REINFORCEConfig, dict[str, Any]]:
    """Family defaults, then ``preset``, then ``overrides`` (field name -> value).

    Keys may name :class:`EnvRunSettings` fields or the algorithm config's
    fields. Returns ``(settings, config, provenance)`` where ``provenance``
    records the family, the defaults' source and what the preset and the
    overrides changed.
    """
    defaults = defaults_for(algorithm, env_name)
    settings_fields = {f.name for f in dataclasses.fields(EnvRunSettings)} - {"env_name"}
    settings = dict(defaults.settings)
    config = dict(defaults.config)
    for layer in (preset or {}), (overrides or {}):
        for key, value in layer.items():
            (settings if key in settings_fields else config)[key] = value
    run_settings = EnvRunSettings(env_name=env_name, **settings)
    config_class = PPOConfig if algorithm == "ppo" else REINFORCEConfig
    unknown = set(config) - {f.name for f in dataclasses.fields(config_class)}
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not settings of {algorithm} ({config_class.__name__})")
    algo_config = config_class(
        **config,
        log_every_n_steps=run_settings.log_every,
        steps_per_execution=run_settings.steps_per_execution,
        seed=seed,
    )
    provenance = {
        "family": defaults.family,
        "defaults_source": defaults.source,
        "preset": dict(preset or {}),
        "overrides": dict(overrides or {}),
    }
    return run_settings, algo_config, provenance


def run_env(
    args: Namespace, algorithm: str, env_name: str, preset: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Train ``algorithm`` on ``env_name`` with the options in ``args`` and write the run directory."""
    overrides = dict(getattr(args, "env_overrides", None) or {})
    settings, config, provenance = resolve(algorithm, env_name, preset, overrides, args.seed)
    build = build_ppo if algorithm == "ppo" else build_reinforce
    with CompileClock() as build_clock:  # the model's initialisers and the env reset compile here
        trainer, source = build(settings, config, args.seed)
    run_config = {
        "recipe": args.recipe,
        "algorithm": algorithm,
        "env": env_name,
        "seed": args.seed,
        **provenance,
        "settings": dataclasses.asdict(settings),
        "iterations": settings.iterations,
        "optimizer": {
            "name": "adam",
            "eps": 1e-5,
            "learning_rate": settings.learning_rate,
            "schedule": "linear to 0 over all updates" if settings.anneal_lr else "constant",
        },
    }
    callbacks = standard_callbacks(args, run_config=run_config, checkpoint_every=None)
    summary = train(trainer, source, settings, callbacks)
    # The whole run's compilation, as rejax's lower().compile() of its train (init included) counts it.
    summary["compile_seconds_fit"] = summary["compile_seconds"]
    summary["compile_seconds_build"] = build_clock.seconds
    summary["compile_seconds"] = build_clock.seconds + summary["compile_seconds_fit"]
    summary.update(recipe=args.recipe, algorithm=algorithm, family=provenance["family"], seed=args.seed)
    write_summary(args.run_dir, summary)
    return summary


def run_ppo_env(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train ppo --env NAME``: PPO with the environment family's defaults."""
    return run_env(args, "ppo", args.env)


def run_reinforce_env(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train reinforce --env NAME``: REINFORCE with the family's network."""
    return run_env(args, "reinforce", args.env)
