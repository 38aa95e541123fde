"""PPO through ``Trainer.fit`` on four gymnax environments with the family defaults, optionally beside rejax.

For each environment and seed this trains PPO exactly as
``artifex-rl train ppo --env NAME`` would (the family defaults of
:mod:`artifex_rl.recipes.env_defaults`), then evaluates the final policy on
``--eval-episodes`` fresh episodes (stochastic policy, as rejax's own
evaluation does), and reports:

* ``eval_return``: mean return of those episodes;
* ``train_return``: the last logged training ``episode_return``;
* ``sps``: environment steps per second after the first compiled call;
* ``compile_seconds`` and ``wall_seconds``.

With ``--rejax-python /tmp/rejax-venv/bin/python`` each of our runs is
followed, back to back, by rejax's PPO with the same settings
(``bench/rejax_envs.py``, run in that separate venv: rejax wants
``gymnax<1.0``; it is never a dependency of ours).

Budgets: the family defaults' ``total_timesteps`` (Acrobot 500k from
PureJaxRL, Pendulum 150k from rejax), except MinAtar, capped at
``--minatar-steps`` (default 2M; PureJaxRL's MinAtar runs use 1e7 steps, hours
on a small CPU). ``--total-timesteps`` replaces every budget (for a quick
check). Every budget is rounded down to whole iterations so both libraries
run the same number of updates.

Run: ``python bench/gymnax_envs.py [--seeds 0 1 2] [--envs ...] [--rejax-python PATH]``.
Writes ``bench/results/gymnax_envs.json`` (and prints a table). Timings on a
shared CPU are noisy; compare figures taken in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ENVS = ("Acrobot-v1", "Pendulum-v1", "Breakout-MinAtar", "SpaceInvaders-MinAtar")
HERE = os.path.dirname(os.path.abspath(__file__))


def evaluate_policy(model: nnx.Module, env_name: str, policy: str, episodes: int, seed: int) -> float:
    """Mean return of ``episodes`` fresh episodes of ``model``'s stochastic policy.

    One episode per environment copy (vmapped), stepped until every copy is
    done or the time limit, like rejax's ``evaluate``.
    """
    from artifex_rl.distributions import get_policy_head
    from artifex_rl.envs import action_spec, make_env
    from artifex_rl.envs.spaces import to_env_action

    env, params = make_env(env_name)
    spec = action_spec(env.action_space(params))
    head = get_policy_head(policy)
    graphdef, state = nnx.split(model)
    limit = int(params.max_steps_in_episode)

    @jax.jit
    def run(state, key):
        net = nnx.merge(graphdef, state)
        reset_key, key = jax.random.split(key)
        obs, env_state = jax.vmap(lambda k: env.reset(k, params))(jax.random.split(reset_key, episodes))
        zeros = jnp.zeros((episodes,))

        def body(carry):
            obs, env_state, done, ret, t, key = carry
            key, act_key, step_key = jax.random.split(key, 3)
            action = head.sample(net(jnp.asarray(obs, jnp.float32))[0], act_key)
            # gymnax >= 1.0: (obs, state, reward, terminated, truncated, info), auto-reset.
            obs, env_state, reward, terminated, truncated, _ = jax.vmap(
                lambda k, s, a: env.step(k, s, a, params)
            )(jax.random.split(step_key, episodes), env_state, to_env_action(spec, action))
            step_done = jnp.logical_or(terminated, truncated)
            ret = ret + jnp.where(done, 0.0, jnp.reshape(reward, (episodes,)))
            return obs, env_state, jnp.logical_or(done, step_done), ret, t + 1, key

        def cond(carry):
            return jnp.logical_and(carry[4] < limit, ~jnp.all(carry[2]))

        carry = (obs, env_state, zeros.astype(bool), zeros, 0, key)
        return jnp.mean(jax.lax.while_loop(cond, body, carry)[3])

    return float(run(state, jax.random.PRNGKey(10_000 + seed)))


def run_ours(env_name: str, seed: int, total_timesteps: int, episodes: int) -> dict[str, Any]:
    """PPO with the family defaults through ``fit`` (no loggers besides the summary's)."""
    from artifex_rl.recipes.env_runs import build_ppo, resolve, train

    settings, config, provenance = resolve("ppo", env_name, overrides={"total_timesteps": total_timesteps},
                                           seed=seed)
    trainer, source = build_ppo(settings, config, seed)
    summary = train(trainer, source, settings)
    return {
        "impl": "artifex_rl",
        "env": env_name,
        "seed": seed,
        "family": provenance["family"],
        "total_env_steps": summary["total_env_steps"],
        "eval_return": evaluate_policy(trainer.model, env_name, config.policy, episodes, seed),
        "train_return": summary["final_episode_return"],
        "sps": summary["sps"],
        "compile_seconds": summary["compile_seconds"],
        "wall_seconds": summary["wall_seconds"],
    }


def run_rejax(python: str, env_name: str, seed: int, total_timesteps: int, episodes: int) -> dict[str, Any]:
    """``bench/rejax_envs.py`` in rejax's venv, same settings; its last stdout line is the JSON row."""
    cmd = [python, os.path.join(HERE, "rejax_envs.py"), "--env", env_name, "--seed", str(seed),
           "--total-timesteps", str(total_timesteps), "--eval-episodes", str(episodes)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # its own jax/flax/gymnax
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def budget(env_name: str, args: argparse.Namespace) -> int:
    """Steps for ``env_name``: the family default (MinAtar capped), rounded down to whole iterations."""
    from artifex_rl.recipes.env_runs import resolve

    settings, _, provenance = resolve("ppo", env_name)
    steps = args.total_timesteps or settings.total_timesteps
    if provenance["family"] == "minatar" and not args.total_timesteps:
        steps = min(steps, args.minatar_steps)
    per_iteration = settings.steps_per_iteration
    return max(1, steps // per_iteration) * per_iteration


def _mean_std(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    return f"{np.mean(vals):.1f} ± {np.std(vals):.1f}" if len(vals) > 1 else f"{vals[0]:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table: one line per (env, impl), means ± std over seeds."""
    lines = ["| env | impl | steps | seeds | eval return | train return | env steps/s | compile s |",
             "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["env"], r["impl"]) for r in rows}, key=lambda k: (ENVS.index(k[0]) if k[0] in ENVS
                                                                         else 99, k))
    for env_name, impl in keys:
        group = [r for r in rows if r["env"] == env_name and r["impl"] == impl]
        sps = [r["sps"] for r in group if r["sps"] is not None]
        lines.append(
            f"| {env_name} | {impl} | {group[0]['total_env_steps']:,} | {len(group)} | "
            f"{_mean_std([r['eval_return'] for r in group])} | "
            f"{_mean_std([r.get('train_return') for r in group])} | "
            f"{f'{np.mean(sps):,.0f}' if sps else 'n/a (all in the first call)'} | "
            f"{np.mean([r['compile_seconds'] for r in group]):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", nargs="+", default=list(ENVS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--total-timesteps", type=int, default=None, help="replaces every budget")
    parser.add_argument("--minatar-steps", type=int, default=2_000_000)
    parser.add_argument("--eval-episodes", type=int, default=128)
    parser.add_argument("--rejax-python", default=None, help="python of a venv with rejax and gymnax<1.0")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "gymnax_envs.json"))
    args = parser.parse_args()

    print(f"devices: {jax.devices()}", flush=True)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for env_name in args.envs:
        steps = budget(env_name, args)
        for seed in args.seeds:
            impls = ["artifex_rl"] + (["rejax"] if args.rejax_python else [])
            for impl in impls:  # back to back, per seed
                if impl == "rejax":
                    row = run_rejax(args.rejax_python, env_name, seed, steps, args.eval_episodes)
                else:
                    row = run_ours(env_name, seed, steps, args.eval_episodes)
                rows.append(row)
                sps = "n/a" if row["sps"] is None else f"{row['sps']:,.0f}"
                print(f"{env_name:22s} {impl:10s} seed {seed}: eval return {row['eval_return']:8.1f} | "
                      f"{sps} env steps/s | compile {row['compile_seconds']:.1f} s", flush=True)
    print()
    print(table(rows))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                   "devices": [str(d) for d in jax.devices()], "wall_seconds": time.perf_counter() - start,
                   "rows": rows}, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
