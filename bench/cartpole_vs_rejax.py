"""CartPole PPO as a user runs it (``artifex-rl train cartpole-ppo``) against rejax's fully compiled PPO.

Both train CartPole-v1 for the same number of environment steps with the
PureJaxRL settings (4 envs x 128 steps, 4 epochs x 4 minibatches, Adam 2.5e-4
annealed, clip 0.2, tanh 64x64): ours is the CLI command with its defaults
(progress bar and metrics logger on), in a subprocess, reading ``sps`` and
``compile_seconds`` (the whole run's: the model's initialisers as well as the
training program, as rejax's ``lower().compile()`` of its ``train`` counts
them) from the run's ``summary.json``; rejax is
``bench/rejax_envs.py`` in its own venv (rejax 0.1.x needs ``gymnax<1.0``;
ours uses gymnax 1.x), compiled ahead of time, then timed. Runs alternate
(ours, rejax, ours, rejax, ...) so machine load hits both alike; the ratio is
of the medians. The two gymnax versions' CartPole step costs are timed too
(``--env-step``), since the comparison crosses them.

The alternated runs of ours have the persistent compilation cache off (a
user's first run); two more runs share a fresh cache directory, and the
second's compile time is the one every later run of the command pays.

    python bench/cartpole_vs_rejax.py --rejax-python .bench-envs/rejax/bin/python [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _results import markdown_table, save  # noqa: E402

ENV_STEP_SNIPPET = """
import json, time, jax, gymnax
from importlib.metadata import version
env, params = gymnax.make("CartPole-v1")
n, k = 4, 20000
keys = jax.random.split(jax.random.PRNGKey(0), n)
obs, state = jax.vmap(env.reset, (0, None))(keys, params)
def body(carry, key):
    state = carry
    out = jax.vmap(env.step, (0, 0, 0, None))(jax.random.split(key, n), state, jax.numpy.zeros(n, int), params)
    return out[1], ()
run = jax.jit(lambda s, key: jax.lax.scan(body, s, jax.random.split(key, k))[0])
jax.block_until_ready(run(state, jax.random.PRNGKey(1)))
t = time.perf_counter(); jax.block_until_ready(run(state, jax.random.PRNGKey(2))); dt = time.perf_counter() - t
print(json.dumps({"gymnax": version("gymnax"), "env_steps_per_s": n * k / dt}))
"""


def run_ours(seed: int, total_timesteps: int, extra: list[str], cache: str = "off",
             label: str = "artifex_rl (CLI)") -> dict:
    """The CLI as a user types it; the figures come from the run's summary.json."""
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [os.path.join(os.path.dirname(sys.executable), "artifex-rl"), "train", "cartpole-ppo",
               "--total-timesteps", str(total_timesteps), "--seed", str(seed), "--run-dir", run_dir,
               "--compile-cache", cache, *extra]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
        wall = time.perf_counter() - start
        if out.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
    return {"impl": label, "seed": seed, "sps": summary["sps"],
            "compile_seconds": summary["compile_seconds"],
            "compile_seconds_build": summary.get("compile_seconds_build"),
            "return": summary["final_episode_return"], "process_seconds": wall}


def run_rejax(python: str, seed: int, total_timesteps: int) -> dict:
    cmd = [python, os.path.join(HERE, "rejax_envs.py"), "--env", "CartPole-v1", "--seed", str(seed),
           "--total-timesteps", str(total_timesteps), "--eval-episodes", "32"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {"impl": "rejax", "seed": seed, "sps": row["sps"], "compile_seconds": row["compile_seconds"],
            "return": row["eval_return"], "process_seconds": wall}


def env_step_speed(python: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", ENV_STEP_SNIPPET], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rejax-python", required=True, help="python of a venv with rejax and gymnax<1.0")
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ours-args", default="", help="extra CLI options for ours, e.g. '--steps-per-execution 40'")
    args = parser.parse_args()

    rows = []
    for r in range(args.repeats):
        for impl in ("ours", "rejax") if r % 2 == 0 else ("rejax", "ours"):
            row = (run_ours(args.seed, args.total_timesteps, args.ours_args.split()) if impl == "ours"
                   else run_rejax(args.rejax_python, args.seed, args.total_timesteps))
            rows.append(row)
            print(f"{row['impl']:18s} sps {row['sps']:>10,.0f}  compile {row['compile_seconds']:5.1f} s  "
                  f"return {row['return']:6.1f}", flush=True)
    ours = [r for r in rows if r["impl"] != "rejax"]
    theirs = [r for r in rows if r["impl"] == "rejax"]
    with tempfile.TemporaryDirectory() as cache:  # a first run fills the cache, the second loads from it
        warm = [run_ours(args.seed, args.total_timesteps, args.ours_args.split(), cache,
                         label=f"artifex_rl (CLI, {kind} cache)") for kind in ("filling", "warm")]
    for row in warm:
        print(f"{row['impl']:18s} sps {row['sps']:>10,.0f}  compile {row['compile_seconds']:5.1f} s  "
              f"return {row['return']:6.1f}", flush=True)
    med = {name: statistics.median(r["sps"] for r in group) for name, group in (("ours", ours), ("rejax", theirs))}
    compile_med = {name: statistics.median(r["compile_seconds"] for r in group)
                   for name, group in (("ours", ours), ("rejax", theirs))}
    steps = [{"venv": "ours", **env_step_speed(sys.executable)},
             {"venv": "rejax", **env_step_speed(args.rejax_python)}]
    summary = {
        "sps_ratio_ours_to_rejax": med["ours"] / med["rejax"], "target": ">= 1.0",
        "sps_median_ours": med["ours"], "sps_median_rejax": med["rejax"],
        "compile_seconds_median_ours": compile_med["ours"], "compile_seconds_median_rejax": compile_med["rejax"],
        "compile_seconds_ours_warm_cache": warm[1]["compile_seconds"],
        "env_step_ratio_ours_gymnax_to_theirs": steps[0]["env_steps_per_s"] / steps[1]["env_steps_per_s"],
    }
    print()
    print(markdown_table(rows + warm))
    print()
    print(markdown_table(steps))
    print(f"\nmedian env steps/s: ours {med['ours']:,.0f}, rejax {med['rejax']:,.0f}: "
          f"ratio {summary['sps_ratio_ours_to_rejax']:.2f}x (target >= 1.0x); compile "
          f"{compile_med['ours']:.1f} s vs {compile_med['rejax']:.1f} s (ours with a warm compilation cache: "
          f"{warm[1]['compile_seconds']:.1f} s)")
    save("cartpole_vs_rejax", rows + warm, summary=summary,
         notes="environment step speed of each venv's gymnax (4 envs, scanned): " + json.dumps(steps))


if __name__ == "__main__":
    main()
