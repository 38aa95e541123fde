"""Where a CartPole PPO iteration spends its time: ours against rejax, part by part, in paired blocks.

One PPO iteration with the PureJaxRL settings (4 envs x 128 steps, 4 epochs
x 4 minibatches, tanh 64x64) in three forms, each run K times inside one
compiled loop and timed per iteration:

* ``collect``: the rollout alone (ours: the rollout source's ``make_collect``;
  rejax: ``collect_trajectories``);
* ``update``: the update alone on one fixed rollout (ours: ``Trainer.train_steps``
  with K copies of one batch; rejax: GAE and its epochs x minibatches of actor
  and critic updates);
* ``iteration``: rollout then update, as training runs it (ours: the fused
  runner ``fit`` calls, ``Trainer.run_chunk``, its state donated as ``fit``
  donates it; rejax: ``train_iteration`` in a ``fori_loop``, not donated, as
  its ``train`` runs it -- a donated loop state measured 1.6x slower there).

Why paired blocks: this 2-core machine's speed drifts by +-20% over seconds,
so timing each side once in its own process mostly measures the drift. Here
both sides stay warm in two processes (ours in this venv, rejax in its own:
rejax 0.1.x needs ``gymnax<1.0``) and take turns, one block of K iterations
each, the order alternating; the ratio is the median of the per-pair ratios
(two identical trainers measured this way agree within 2%).

    python bench/cartpole_parts.py --rejax-python .bench-envs/rejax/bin/python [--blocks 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

K = 50
PARTS = ("collect", "update", "iteration")

# Both workers: build the three parts, compile them, say "ready", then run one
# block of the named part per "go <part>" line and answer with ms per iteration.
WORKER_LOOP = """
for name, fn in parts.items():
    jax.block_until_ready(fn())
print("ready", flush=True)
for line in sys.stdin:
    words = line.split()
    if not words or words[0] != "go":
        break
    tic = time.perf_counter()
    jax.block_until_ready(parts[words[1]]())
    print((time.perf_counter() - tic) / K * 1e3, flush=True)
"""

REJAX_WORKER = """
import sys, time, jax
sys.path.insert(0, {here!r})
from rejax_envs import rejax_config
from rejax import PPO
from rejax.algos.ppo import AdvantageMinibatch
K = {k}
config, _ = rejax_config("CartPole-v1", 500_000)
algo = PPO.create(**config)
ts0 = jax.jit(algo.init_state)(jax.random.PRNGKey(0))
ts_after, traj = jax.jit(algo.collect_trajectories)(ts0)

def update_only(ts):
    last_val = algo.critic.apply(ts.critic_ts.params, ts.last_obs)
    adv, targets = algo.calculate_gae(traj, last_val)
    def epoch(ts, _):
        rng, mb_rng = jax.random.split(ts.rng)
        ts = ts.replace(rng=rng)
        mbs = algo.shuffle_and_split(AdvantageMinibatch(traj, adv, targets), mb_rng)
        return jax.lax.scan(lambda t, mb: (algo.update(t, mb), None), ts, mbs)[0], None
    return jax.lax.scan(epoch, ts, None, algo.num_epochs)[0]

def looped(body):
    return jax.jit(lambda ts: jax.lax.fori_loop(0, K, lambda _, t: body(t), ts))

collect, update, iterate = looped(lambda t: algo.collect_trajectories(t)[0]), looped(update_only), looped(algo.train_iteration)
state = {{"ts": ts0}}

def run_iteration():
    state["ts"] = iterate(state["ts"])
    return state["ts"]

parts = {{"collect": lambda: collect(ts0), "update": lambda: update(ts_after), "iteration": run_iteration}}
""" + WORKER_LOOP

OURS_WORKER = """
import sys, time, jax
from artifex_rl.recipes.env_runs import build_ppo, resolve
K = {k}
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



def current():  # the live policy and env carry (the trainer donates its state to each call)
    snap = trainer.policy_snapshot()
    return snap.params, snap.model_state, source.source_state["carry"]


batches = [next(iter(source))] * K
trainer.fitting = True  # run_chunk as fit calls it (no hand-written-loop bookkeeping)
parts = {{
    "collect": lambda: collect_k(*current(), jax.random.PRNGKey(0)),
    "update": lambda: (trainer.train_steps(batches), trainer.train_state)[1],
    "iteration": lambda: (trainer.run_chunk(source=source, size=K), trainer.train_state)[1],
}}
""" + WORKER_LOOP


def start(python: str, code: str, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen([python, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)
    for line in proc.stdout:
        if line.strip() == "ready":
            return proc
    raise RuntimeError(f"{python} worker exited before it was ready (rc {proc.wait()})")


def block(proc: subprocess.Popen, part: str) -> float:
    proc.stdin.write(f"go {part}\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rejax-python", required=True)
    parser.add_argument("--blocks", type=int, default=12, help="blocks of K iterations per side and part")
    args = parser.parse_args()
    from _results import markdown_table, save

    rejax_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    workers = {"ours": start(sys.executable, OURS_WORKER.format(k=K)),
               "rejax": start(args.rejax_python, REJAX_WORKER.format(here=HERE, k=K), rejax_env)}
    times = {(side, part): [] for side in workers for part in PARTS}
    for b in range(args.blocks):
        for part in PARTS:
            order = ("ours", "rejax") if b % 2 == 0 else ("rejax", "ours")
            for side in order:
                times[side, part].append(block(workers[side], part))
    for proc in workers.values():
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait()
    rows = []
    for part in PARTS:
        ours, theirs = times["ours", part], times["rejax", part]
        rows.append({"part (ms per iteration, K=50 in one call)": part,
                     "ours median": statistics.median(ours), "rejax median": statistics.median(theirs),
                     "rejax / ours (median of pairs)": statistics.median(t / o for o, t in zip(ours, theirs, strict=True)),
                     "pairs": len(ours)})
    print(markdown_table(rows))
    print("rejax / ours > 1: ours is faster")
    save("cartpole_parts", rows, summary={r["part (ms per iteration, K=50 in one call)"]:
                                          r["rejax / ours (median of pairs)"] for r in rows})


if __name__ == "__main__":
    main()
