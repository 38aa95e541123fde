"""Where a CartPole PPO iteration spends its time: ours against rejax, part by part.

One PPO iteration with the PureJaxRL settings (4 envs x 128 steps, 4 epochs
x 4 minibatches, tanh 64x64) in three forms, each run K = 50 times inside one
compiled ``lax.scan`` and timed per iteration:

* ``collect``: the rollout alone (ours: ``make_collect``; rejax:
  ``collect_trajectories``);
* ``update``: the update alone on one fixed rollout (ours: ``Trainer.train_steps``
  with the K batches; rejax: GAE and its epochs x minibatches of actor and
  critic updates);
* ``iteration``: rollout then update, as training runs it (ours: the fused
  runner ``fit`` calls, ``Trainer.run_chunk``; rejax: ``train_iteration``).

Ours runs in this process; rejax in its own venv (``--rejax-python``: rejax
0.1.x with ``gymnax<1.0``), the two sides alternating ``--rounds`` times so
machine load hits both; min and median per part.

    python bench/cartpole_parts.py --rejax-python .bench-envs/rejax/bin/python [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

K = 50

REJAX_SNIPPET = """
import json, sys, time, jax
sys.path.insert(0, {here!r})
from rejax_envs import rejax_config
from rejax import PPO
from rejax.algos.ppo import AdvantageMinibatch
K = {k}
config, _ = rejax_config("CartPole-v1", 500_000)
algo = PPO.create(**config)
ts = algo.init_state(jax.random.PRNGKey(0))
ts_after, traj = jax.jit(algo.collect_trajectories)(ts)

def update_only(ts):
    last_val = algo.critic.apply(ts.critic_ts.params, ts.last_obs)
    adv, targets = algo.calculate_gae(traj, last_val)
    def epoch(ts, _):
        rng, mb_rng = jax.random.split(ts.rng)
        ts = ts.replace(rng=rng)
        mbs = algo.shuffle_and_split(AdvantageMinibatch(traj, adv, targets), mb_rng)
        return jax.lax.scan(lambda t, mb: (algo.update(t, mb), None), ts, mbs)[0], None
    return jax.lax.scan(epoch, ts, None, algo.num_epochs)[0]

def scanned(body):
    return jax.jit(lambda ts: jax.lax.scan(lambda t, _: (body(t), None), ts, None, K)[0])

parts = {{"collect": (scanned(lambda t: algo.collect_trajectories(t)[0]), ts),
          "update": (scanned(update_only), ts_after),
          "iteration": (scanned(algo.train_iteration), ts)}}
out = {{}}
for name, (fn, state) in parts.items():
    jax.block_until_ready(fn(state))
    tic = time.perf_counter(); jax.block_until_ready(fn(state))
    out[name] = (time.perf_counter() - tic) / K * 1e3
print(json.dumps(out))
"""


def ours_once() -> dict[str, float]:
    import jax

    from artifex_rl.recipes.env_runs import build_ppo, resolve

    settings, config, _ = resolve("ppo", "CartPole-v1", None, dict(steps_per_execution=K, log_every=K), 0)
    trainer, source = build_ppo(settings, config, 0)
    snap = trainer.policy_snapshot()
    collect, graphdef = source._collect, snap.graphdef

    @jax.jit
    def collect_k(params, model_state, carry, key):
        def body(c, k):
            batch, c = collect(graphdef, params, model_state, c, k)
            return c, batch["rewards"].sum()

        return jax.lax.scan(body, carry, jax.random.split(key, K))

    batches = [next(iter(source))] * K
    trainer.fitting = True  # run_chunk as fit calls it (no hand-written-loop bookkeeping)
    parts = {
        "collect": lambda: collect_k(snap.params, snap.model_state, source.source_state["carry"],
                                     jax.random.PRNGKey(0)),
        "update": lambda: (trainer.train_steps(batches), trainer.train_state)[1],
        "iteration": lambda: (trainer.run_chunk(source=source, size=K), trainer.train_state)[1],
    }
    out = {}
    for name, fn in parts.items():
        jax.block_until_ready(fn())
        tic = time.perf_counter()
        jax.block_until_ready(fn())
        out[name] = (time.perf_counter() - tic) / K * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rejax-python", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--_ours", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._ours:
        print(json.dumps(ours_once()))
        return
    from _results import markdown_table, save

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    runs: dict[str, list[dict[str, float]]] = {"ours": [], "rejax": []}
    for _ in range(args.rounds):  # a fresh process per side and round: no shared warm state
        ours = subprocess.run([sys.executable, __file__, "--rejax-python", args.rejax_python, "--_ours"],
                              capture_output=True, text=True, check=True)
        runs["ours"].append(json.loads(ours.stdout.strip().splitlines()[-1]))
        theirs = subprocess.run([args.rejax_python, "-c", REJAX_SNIPPET.format(here=HERE, k=K)],
                                capture_output=True, text=True, check=True, env=env)
        runs["rejax"].append(json.loads(theirs.stdout.strip().splitlines()[-1]))
        print("ours", runs["ours"][-1], "rejax", runs["rejax"][-1], flush=True)
    rows = []
    for part in ("collect", "update", "iteration"):
        ours = [r[part] for r in runs["ours"]]
        theirs = [r[part] for r in runs["rejax"]]
        rows.append({"part (ms per iteration, K=50 in one scan)": part,
                     "ours min": min(ours), "ours median": statistics.median(ours),
                     "rejax min": min(theirs), "rejax median": statistics.median(theirs),
                     "ours / rejax (medians)": statistics.median(ours) / statistics.median(theirs)})
    print(markdown_table(rows))
    save("cartpole_parts", rows, summary={r["part (ms per iteration, K=50 in one scan)"]: r["ours / rejax (medians)"]
                                          for r in rows})


if __name__ == "__main__":
    main()
