"""rejax's PPO with our family defaults, for the side-by-side in ``bench/gymnax_envs.py``.

Runs in a separate venv (rejax 0.1.3 wants ``gymnax<1.0``; rejax is never a
dependency of artifex_rl)::

    python3 -m venv /tmp/rejax-venv
    /tmp/rejax-venv/bin/pip install rejax 'gymnax<1.0'
    /tmp/rejax-venv/bin/python bench/rejax_envs.py --env Acrobot-v1 --seed 0 --total-timesteps 500000

It reads the same settings tables as ``artifex-rl train ppo --env NAME``
(``artifex_rl/recipes/env_defaults.py``, loaded by path, so artifex_rl itself
is not imported) and maps them onto ``rejax.PPO.create``: ``num_envs``,
``num_steps``, ``num_epochs`` (our ``update_epochs``), ``num_minibatches``,
``learning_rate`` (an optax linear schedule over all updates when the family
anneals), ``max_grad_norm``, ``gamma``, ``gae_lambda``, ``clip_eps``,
``ent_coef``, ``vf_coef``, the MLP's activation and widths;
``normalize_observations=False`` as on our side. What stays different is
rejax's own design: separate actor and critic networks *and optimisers*,
element-wise gradient clipping (``optax.clip``) instead of a global norm,
optax's Adam epsilon (1e-8; ours 1e-5), and time-limit truncation treated as
termination (no bootstrap; ours bootstraps truncated steps).

Timing: the training function is compiled ahead of time (``lower().compile()``)
and the run is timed separately, with rejax's periodic evaluation switched off
(one block of ``total_timesteps // (num_envs * num_steps)`` iterations); the
final policy is then evaluated with rejax's ``evaluate`` on ``--eval-episodes``
episodes. Prints one JSON line with the same keys as ``bench/gymnax_envs.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import gymnax
import jax
import optax
from rejax import PPO
from rejax.evaluate import evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULTS = os.path.join(HERE, "..", "artifex_rl", "recipes", "env_defaults.py")


def load_defaults():
    spec = importlib.util.spec_from_file_location("env_defaults", DEFAULTS)
    module = importlib.util.module_from_spec(spec)
    sys.modules["env_defaults"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def family_of(env_name: str) -> str:
    """The same rule as ``env_defaults.family_of``, with this venv's gymnax."""
    env, params = gymnax.make(env_name)
    if not isinstance(env.action_space(params), gymnax.environments.spaces.Discrete):
        return "continuous"
    return "minatar" if len(env.observation_space(params).shape) > 1 else "discrete"


def rejax_config(env_name: str, total_timesteps: int) -> tuple[dict, str]:
    defaults = load_defaults()
    family = family_of(env_name)
    s, c = defaults.PPO_SETTINGS[family], defaults.PPO_CONFIG[family]
    per_iteration = s["num_envs"] * s["num_steps"]
    iterations = max(1, total_timesteps // per_iteration)
    total = iterations * per_iteration
    lr = s["learning_rate"]
    if s["anneal_lr"]:
        lr = optax.linear_schedule(lr, 0.0, iterations * c["update_epochs"] * c["num_minibatches"])
    config = dict(
        env=env_name,
        agent_kwargs={"activation": s["activation"], "hidden_layer_sizes": tuple(s["hidden"])},
        num_envs=s["num_envs"],
        num_steps=s["num_steps"],
        num_epochs=c["update_epochs"],
        num_minibatches=c["num_minibatches"],
        learning_rate=lr,
        max_grad_norm=c["max_grad_norm"],
        total_timesteps=total,
        eval_freq=total,  # one block of iterations, no evaluation inside the timed run
        skip_initial_evaluation=True,
        gamma=c["gamma"],
        gae_lambda=c["gae_lambda"],
        clip_eps=c["clip_param"],
        ent_coef=c["entropy_coeff"],
        vf_coef=c["vf_coeff"],
        normalize_observations=False,
    )
    return config, family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--total-timesteps", type=int, required=True)
    parser.add_argument("--eval-episodes", type=int, default=128)
    args = parser.parse_args()

    config, family = rejax_config(args.env, args.total_timesteps)
    algo = PPO.create(**config)
    algo = algo.replace(eval_callback=lambda algo, ts, rng: ())
    key = jax.random.PRNGKey(args.seed)
    start = time.perf_counter()
    train = jax.jit(algo.train).lower(key).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ts, _ = train(key)
    jax.block_until_ready(ts)
    run_seconds = time.perf_counter() - start
    act = algo.make_act(ts)
    _, returns = evaluate(act, jax.random.PRNGKey(10_000 + args.seed), algo.env, algo.env_params,
                          args.eval_episodes, algo.env_params.max_steps_in_episode)
    print(json.dumps({
        "impl": "rejax",
        "env": args.env,
        "seed": args.seed,
        "family": family,
        "total_env_steps": config["total_timesteps"],
        "eval_return": float(returns.mean()),
        "train_return": None,
        "sps": config["total_timesteps"] / run_seconds,
        "compile_seconds": compile_seconds,
        "wall_seconds": compile_seconds + run_seconds,
        "versions": {"jax": jax.__version__, "gymnax": getattr(gymnax, "__version__", "?")},
    }))


if __name__ == "__main__":
    main()
