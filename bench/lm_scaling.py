"""Language-model RL as the shape grows: GRPO vs PPO memory, and step time against batch and length.

1. **Peak memory of the compiled step** (XLA ``memory_analysis`` of the
   trainer's step: arguments + outputs + temporaries - aliased) for
   ``GRPOTrainer`` (frozen reference, beta 0.04) and ``PPOTrainer(policy="tokens")``
   on ``TransformerLM(value_head=True)`` (KL-shaped rewards against the same
   frozen reference), 64 sequences, prompt 8, total length 32..512, width 128,
   2 layers, 4 heads. PPO twice: one update per batch (the rows per gradient
   of GRPO) and its default 4 epochs x 4 minibatches. The seeds claim GRPO
   "saves about 50% memory by eliminating the value network": that holds for
   a separate critic the size of the policy; a value *head* on the shared
   trunk costs one ``d_model -> 1`` layer.
2. **GRPO step time** (``train_step`` on a fixed batch, median of repeats)
   against the batch size at length 32 and against the length at batch 64,
   with a plot (``bench/results/lm_step_scaling.png``; the docs show a copy): linear in the batch;
   in the length, linear while the dense layers dominate, then bending
   towards quadratic where attention's ``T x T`` scores take over.

    PYTHONPATH=. python bench/lm_scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np
import optax
from flax import nnx

from artifex_rl.core.runner import split_batch
from artifex_rl.models.transformer import TransformerLM
from artifex_rl.rl import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _results import markdown_table, save  # noqa: E402

VOCAB, PROMPT, WIDTH, LAYERS, HEADS, GROUP = 64, 8, 128, 2, 4, 4


def batch(b: int, length: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"observations": rng.integers(0, VOCAB, (b, PROMPT)).astype(np.int32),
            "actions": rng.integers(0, VOCAB, (b, length - PROMPT)).astype(np.int32),
            "rewards": rng.normal(size=b).astype(np.float32)}


def grpo(length: int) -> GRPOTrainer:
    model = TransformerLM(VOCAB, length, d_model=WIDTH, num_layers=LAYERS, num_heads=HEADS, rngs=nnx.Rngs(0))
    return GRPOTrainer(model, optax.adam(1e-4), GRPOConfig(num_generations=GROUP, beta=0.04, log_every_n_steps=10**9))


def ppo(length: int, epochs: int, minibatches: int) -> PPOTrainer:
    model = TransformerLM(VOCAB, length, d_model=WIDTH, num_layers=LAYERS, num_heads=HEADS, value_head=True,
                          rngs=nnx.Rngs(0))
    return PPOTrainer(model, optax.adam(1e-4), PPOConfig(policy="tokens", kl_coeff=0.04, update_epochs=epochs,
                                                         num_minibatches=minibatches, log_every_n_steps=10**9))


def peak_mb(trainer, data: dict) -> float:
    arrays, static = split_batch(data)
    compiled = trainer._compiled_fns()["step"].lower(  # bench-only reach into the compiled step
        trainer.train_state, trainer.frozen_states, arrays, static).compile()
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return total / 2**20


def step_ms(trainer, data: dict, repeats: int) -> float:
    jax.block_until_ready(trainer.train_step(data))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(trainer.train_step(data))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def plot(by_batch: list[dict], by_length: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, rows, key, label in ((axes[0], by_batch, "batch", "sequences per step (length 32)"),
                                 (axes[1], by_length, "length", "sequence length (batch 64)")):
        x = np.array([r[key] for r in rows], float)
        y = np.array([r["GRPO step ms"] for r in rows])
        ax.plot(x, y, "o-", label="measured")
        ax.plot(x, y[0] * x / x[0], "--", color="grey", label="linear from the first point")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("GRPO train_step, ms")
        ax.legend(fontsize=8)
    fig.suptitle("GRPO step time, TransformerLM width 128, 2 layers (CPU)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {os.path.relpath(path)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="lengths up to 128, fewer repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--plot", default=os.path.join(HERE, "results", "lm_step_scaling.png"),
                        help="where to draw the plot (docs/images/lm_step_scaling.png is the documented one)")
    args = parser.parse_args()
    lengths = (32, 64, 128) if args.quick else (32, 64, 128, 256, 512)
    repeats = 2 if args.quick else args.repeats

    memory = []
    for length in lengths:
        data = batch(64, length)
        row = {"length": length, "GRPO MB": peak_mb(grpo(length), data),
               "PPO 1x1 MB": peak_mb(ppo(length, 1, 1), data), "PPO 4x4 MB": peak_mb(ppo(length, 4, 4), data)}
        row["GRPO / PPO 1x1"] = row["GRPO MB"] / row["PPO 1x1 MB"]
        memory.append(row)
        print(markdown_table([row]), flush=True)
    by_batch = [{"batch": b, "GRPO step ms": step_ms(grpo(32), batch(b, 32), repeats)} for b in (16, 32, 64, 128)]
    by_length = [{"length": n, "GRPO step ms": step_ms(grpo(n), batch(64, n), max(1, repeats * 32 // n))}
                 for n in (32, 64, 128, 256)]
    for rows, key in ((by_batch, "batch"), (by_length, "length")):
        for r in rows:  # time per unit of work relative to the smallest shape: 1.0 = perfectly linear
            r["ms per unit / first"] = (r["GRPO step ms"] / r[key]) / (rows[0]["GRPO step ms"] / rows[0][key])
    print()
    print(markdown_table(memory))
    print()
    print(markdown_table(by_batch))
    print()
    print(markdown_table(by_length))
    plot(by_batch, by_length, args.plot)
    save("lm_scaling", memory, summary={"grpo_over_ppo_memory": {r["length"]: r["GRPO / PPO 1x1"] for r in memory},
                                        "step_vs_batch": by_batch, "step_vs_length": by_length})


if __name__ == "__main__":
    main()
