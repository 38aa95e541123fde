"""``make bench``: every benchmark in ``bench/``, one after the other, and one report.

Each benchmark runs in a subprocess with the Python it needs (ours, or the
bench-only venvs under ``.bench-envs/`` that ``make bench`` creates for the
peer libraries: ``artifex`` for avitai-artifex, ``rejax`` for rejax with
``gymnax<1.0``); its stdout is kept in ``bench/results/<name>.log`` and a
record (command, date, machine, wall time, exit code, and the benchmark's own
JSON where it writes one) in ``bench/results/<name>.json``.
``bench/results/report.md`` collects every table; ``docs/benchmarks.md``
quotes it. A benchmark that fails is reported and the others still run.

    python bench/run_all.py                 # everything (about an hour on 2 CPU cores)
    python bench/run_all.py --quick         # shorter settings, minutes
    python bench/run_all.py --only vs_artifex cartpole_vs_rejax
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _results import RESULTS_DIR, machine, save  # noqa: E402

ENVS = os.path.join(ROOT, ".bench-envs")
OURS, ARTIFEX, REJAX = sys.executable, os.path.join(ENVS, "artifex", "bin", "python"), \
    os.path.join(ENVS, "rejax", "bin", "python")

#: name -> (python, script and arguments, arguments with --quick, what it measures)
BENCHMARKS: dict[str, tuple[str, list[str], list[str], str]] = {
    "trainer_overhead": (OURS, ["trainer_overhead.py"], ["trainer_overhead.py", "--steps", "500", "--reps", "3",
                                                          "--conv-steps", "50"],
                         "fit / train_step vs a hand-written donated jax.jit step (MLP and conv net)"),
    "cartpole_ppo": (OURS, ["cartpole_ppo.py", "--seeds", "0", "1", "2", "--paired", "12"], ["cartpole_ppo.py"],
                     "PPO CartPole through fit vs a fully compiled PureJaxRL-style loop"),
    "cartpole_vs_rejax": (OURS, ["cartpole_vs_rejax.py", "--rejax-python", REJAX],
                          ["cartpole_vs_rejax.py", "--rejax-python", REJAX, "--repeats", "1"],
                          "`artifex-rl train cartpole-ppo` vs rejax's PPO, env steps/s"),
    "cartpole_parts": (OURS, ["cartpole_parts.py", "--rejax-python", REJAX, "--blocks", "12"],
                       ["cartpole_parts.py", "--rejax-python", REJAX, "--blocks", "4"],
                       "a CartPole PPO iteration's rollout, update and whole, ours vs rejax, ms"),
    "vs_tunix": (OURS, ["vs_tunix.py", "--shapes"], ["vs_tunix.py", "--rounds", "1", "--steps", "5"],
                 "one GRPO update vs Tunix 0.1.7's grpo_loss_fn in its compiled step (its Llama3)"),
    "vs_artifex": (ARTIFEX, ["vs_artifex.py"], ["vs_artifex.py", "--steps", "10", "--rounds", "3"],
                   "REINFORCE/GRPO/DPO/PPO steps/s vs avitai-artifex 0.1.3 (shipped and jitted)"),
    "floors": (OURS, ["floors.py"], ["floors.py", "--steps", "10", "--rounds", "3"],
               "each algorithm's fit step vs the fewest-forward-passes hand-written jit step"),
    "lm_scaling": (OURS, ["lm_scaling.py"], ["lm_scaling.py", "--quick"],
                   "GRPO vs PPO-with-value-head memory, step time vs batch and sequence length"),
    "sampler_speed": (OURS, ["sampler_speed.py", "--sweep", "--repeats", "6"], ["sampler_speed.py", "--sweep", "32", "64", "--repeats", "3"],
                      "KV-cache sampler vs recompute, tokens/s at lengths 32..256"),
    "lm_grpo": (OURS, ["lm_grpo.py"], ["lm_grpo.py", "--repeats", "1", "--split-repeats", "5"],
                "GRPO time-to-reward through fit vs a hand-fused loop"),
    "lm_ppo_vs_grpo": (OURS, ["lm_ppo_vs_grpo.py", "--budget", "180"], ["lm_ppo_vs_grpo.py", "--budget", "30"],
                       "token PPO next to GRPO on digit_sum: reward against wall time"),
    "vs_trl": (OURS, ["vs_trl.py", "--shapes", "--trl-threads", "1", "2"],
               ["vs_trl.py", "--rounds", "1", "--steps", "3", "--trl-threads", "1"],
               "one GRPO update step and one online iteration vs TRL's GRPOTrainer (torch CPU)"),
    "diffusion_step": (OURS, ["diffusion_step.py", "--steps", "20", "--rounds", "5"],
                       ["diffusion_step.py", "--steps", "5", "--rounds", "3"],
                       "DiffusionTrainer step vs a hand-written jit step"),
    "gan_step": (OURS, ["gan_step.py"], ["gan_step.py", "--steps", "50"],
                 "GANTrainer two-optimizer step vs a hand-written one"),
    "chain_grpo": (OURS, ["chain_grpo.py"], ["chain_grpo.py", "--iterations", "5", "--memory-lengths", "5", "10"],
                   "GRPO on a diffusion chain through fit vs hand-fused"),
    "nan_guard_forms": (OURS, ["nan_guard_forms.py"], ["nan_guard_forms.py"],
                        "the cost of each way to keep a non-finite update out"),
    "scaling": (OURS, ["scaling.py"], ["scaling.py", "--devices", "1", "8", "--reps", "2"],
                "data parallel over 1..8 forced host devices"),
    "soak": (OURS, ["soak.py"], ["soak.py", "--steps", "4000"], "long run: memory and checkpoint stability"),
    "gymnax_envs": (OURS, ["gymnax_envs.py", "--rejax-python", REJAX],
                    ["gymnax_envs.py", "--rejax-python", REJAX, "--seeds", "0", "--total-timesteps", "200000"],
                    "PPO on Acrobot, Pendulum, Breakout-/SpaceInvaders-MinAtar vs rejax, 3 seeds"),
}


def run(name: str, quick: bool, timeout: float) -> dict:
    python, full, short, what = BENCHMARKS[name]
    argv = short if quick else full
    cmd = [python, os.path.join(HERE, argv[0]), *argv[1:]]
    log_path = os.path.join(RESULTS_DIR, f"{name}.log")
    record = {"name": name, "what": what, "command": " ".join(["python", f"bench/{argv[0]}", *argv[1:]])}
    if not os.path.exists(python):
        record.update(returncode=None, error=f"{python} is missing: run `make bench` (it creates the venv)")
        return record
    env = dict(os.environ, PYTHONPATH=ROOT)
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout, check=False)
        stdout, code = out.stdout + out.stderr[-4000:], out.returncode
    except subprocess.TimeoutExpired as exc:
        stdout, code = f"{exc.stdout or ''}\nTIMEOUT after {timeout:.0f} s", -1
    record.update(returncode=code, wall_seconds=time.perf_counter() - start)
    with open(log_path, "w") as f:
        f.write(stdout if isinstance(stdout, str) else stdout.decode())
    own = os.path.join(RESULTS_DIR, f"{name}.json")
    if os.path.exists(own) and os.path.getmtime(own) >= time.time() - record["wall_seconds"] - 1:
        with open(own) as f:
            record["result"] = json.load(f)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS))
    parser.add_argument("--skip", nargs="+", default=[], choices=sorted(BENCHMARKS))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    args = parser.parse_args()
    os.makedirs(RESULTS_DIR, exist_ok=True)
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    records, report = [], [f"# Benchmarks ({'quick' if args.quick else 'full'} settings)\n",
                           f"machine: `{json.dumps(machine())}`\n"]
    for name in names:
        print(f"=== {name}: {BENCHMARKS[name][3]}", flush=True)
        record = run(name, args.quick, args.timeout)
        records.append(record)
        status = "ok" if record.get("returncode") == 0 else f"FAILED ({record.get('error') or record['returncode']})"
        print(f"    {status} in {record.get('wall_seconds', 0):.0f} s; log: bench/results/{name}.log", flush=True)
        report.append(f"## {name}\n\n{BENCHMARKS[name][3]}\n\n    {record['command']}\n\n{status}\n")
        log = os.path.join(RESULTS_DIR, f"{name}.log")
        if os.path.exists(log):
            with open(log) as f:
                tail = [ln for ln in f.read().splitlines() if ln.startswith("|") or "ratio" in ln.lower()]
            report.append("\n".join(tail[-40:]) + "\n")
    with open(os.path.join(RESULTS_DIR, "report.md"), "w") as f:
        f.write("\n".join(report))
    save("run_all", [{k: r.get(k) for k in ("name", "returncode", "wall_seconds", "command")} for r in records],
         summary={"failed": [r["name"] for r in records if r.get("returncode") != 0]})
    print(f"\nreport: {os.path.relpath(os.path.join(RESULTS_DIR, 'report.md'))}")
    sys.exit(1 if any(r.get("returncode") != 0 for r in records) else 0)


if __name__ == "__main__":
    main()
