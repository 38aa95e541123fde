"""Soak test: a long run of a small trainer with every callback on stays flat.

A REINFORCE trainer (MLP policy, 4 observations, 2 actions, host numpy
batches of 64 one-step samples, so the host value checks run every step)
trains for ``--steps`` (20k) steps with a progress bar, the metrics logger,
W&B offline, a checkpoint every ``--ckpt-every`` (1k) steps and early
stopping (patient enough never to stop). At every 1k steps it records:

* host memory (RSS, psutil): growth after the warm-up (the first 1k steps)
  must stay under 50 MB;
* the compile count (``trainer.trace_count``): equal to its value after the
  warm-up (nothing recompiles);
* wall time per 1k steps: flat (the last window within 1.5x of the median).

Prints a table and writes ``bench/results/soak.json``; exits 1 when a target
is missed. Run: ``python bench/soak.py [--steps 20000] [--ckpt-every 1000]``
(``--steps 4000`` for a quick check).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import optax
import psutil
from flax import nnx

from artifex_rl.callbacks import (
    Callback,
    CheckpointConfig,
    EarlyStopping,
    MetricsLogger,
    ModelCheckpoint,
    ProgressBarCallback,
    WandbLoggerCallback,
    WandbLoggerConfig,
)
from artifex_rl.rl import REINFORCEConfig, REINFORCETrainer

OBS, ACTIONS, BATCH, N_BATCHES, WINDOW = 4, 2, 64, 32, 1000
RSS_LIMIT_MB, FLAT_RATIO = 50.0, 1.5


class Policy(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(OBS, 32, rngs=rngs)
        self.l2 = nnx.Linear(32, ACTIONS, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


def batches(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One-step samples: reward 1 when the action matches the sign of the first feature."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(N_BATCHES):
        obs = rng.normal(size=(BATCH, OBS)).astype(np.float32)
        actions = rng.integers(0, ACTIONS, BATCH).astype(np.int32)
        rewards = (actions == (obs[:, 0] > 0)).astype(np.float32)
        out.append({"observations": obs, "actions": actions, "rewards": rewards, "dones": np.ones(BATCH, np.float32)})
    return out


class Probe(Callback):
    """Every WINDOW steps: wall time, RSS and compile count."""

    log_may_lag = True

    def __init__(self):
        self.rows: list[dict[str, float]] = []
        self.process = psutil.Process()
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, metrics, step):
        if trainer.global_step % WINDOW == 0:
            now = time.perf_counter()
            self.rows.append({
                "step": trainer.global_step,
                "seconds": now - self.t0,
                "rss_mb": self.process.memory_info().rss / 2**20,
                "traces": trainer.trace_count,
            })
            self.t0 = now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--ckpt-every", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "soak.json"))
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")

    with tempfile.TemporaryDirectory() as tmp:
        trainer = REINFORCETrainer(Policy(rngs=nnx.Rngs(0)), optax.adam(1e-3),
                                   REINFORCEConfig(log_every_n_steps=50, normalize_returns=True))
        probe = Probe()
        callbacks = [
            ProgressBarCallback(file=open(os.devnull, "w")),  # noqa: SIM115 - the bar's output is not the point
            MetricsLogger(os.path.join(tmp, "run"), plot=False),
            WandbLoggerCallback(WandbLoggerConfig(project="soak", mode="offline", dir=tmp)),
            ModelCheckpoint(CheckpointConfig(os.path.join(tmp, "ckpt"), every_n_train_steps=args.ckpt_every,
                                             save_top_k=2)),
            EarlyStopping(monitor="loss", patience=10**6),
            probe,
        ]
        gc.collect()
        trainer.fit(batches(), max_steps=args.steps, max_epochs=None, callbacks=callbacks)

    rows = probe.rows
    if len(rows) < 3:
        print("soak: run at least 3000 steps", file=sys.stderr)
        return 2
    warm, last = rows[0], rows[-1]
    windows = [r["seconds"] for r in rows[1:]]
    result = {
        "steps": trainer.global_step,
        "rss_warm_mb": warm["rss_mb"],
        "rss_end_mb": last["rss_mb"],
        "rss_growth_mb": last["rss_mb"] - warm["rss_mb"],
        "rss_peak_growth_mb": max(r["rss_mb"] for r in rows) - warm["rss_mb"],
        "traces_after_warmup": warm["traces"],
        "traces_end": last["traces"],
        "seconds_per_1k_median": statistics.median(windows),
        "seconds_per_1k_first": windows[0],
        "seconds_per_1k_last": windows[-1],
        "windows": rows,
    }
    checks = {
        f"RSS growth after warm-up < {RSS_LIMIT_MB:.0f} MB": result["rss_growth_mb"] < RSS_LIMIT_MB,
        "compile count unchanged after warm-up": result["traces_end"] == result["traces_after_warmup"],
        f"last 1k-step window within {FLAT_RATIO}x of the median": windows[-1] < FLAT_RATIO * result["seconds_per_1k_median"],
    }
    result["checks"] = checks

    print(f"{'step':>7} {'s/1k steps':>11} {'RSS MB':>8} {'traces':>7}")
    for r in rows:
        print(f"{r['step']:>7} {r['seconds']:>11.2f} {r['rss_mb']:>8.1f} {r['traces']:>7}")
    print(f"RSS growth after warm-up: {result['rss_growth_mb']:+.1f} MB (peak {result['rss_peak_growth_mb']:+.1f} MB)")
    for name, ok in checks.items():
        print(f"[{'ok' if ok else 'FAIL'}] {name}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print("wrote", args.out)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
