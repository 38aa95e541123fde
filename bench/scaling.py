"""Step time against the number of devices on the ``"data"`` mesh (issue 13).

Model: MLP regression (in 256 -> 1024 -> 1024 -> 256, ReLU; 1.6M parameters),
global batch 512, Adam; ``Trainer(..., mesh=make_mesh(data=n))`` with the
parameters replicated (data parallel) and with ``param_sharding="fsdp"``,
against ``mesh=None`` (the single-device path). Each device count runs in its
own subprocess, because ``--xla_force_host_platform_device_count`` must be set
before JAX starts; each measures the median of ``--reps`` timings of
``--steps`` steps of ``train_steps`` (``steps_per_execution`` steps per call).

What it shows depends on the machine:

* On the CPU with forced host devices, every "device" is a thread slice of
  the same cores (2 on the machine this was written on), so the split cannot
  speed anything up: the ratio to one device measures the *overhead* of the
  partitioned program (per-device launches, the all-reduce of gradients,
  FSDP's all-gathers), i.e. what sharding costs when there is no extra compute.
* On a real multi-device machine (``--real``: no forced devices, the GPUs or
  TPUs JAX finds), the same table measures the speed-up of data parallelism
  at a fixed global batch (ideal: the ratio falls like 1/n until the
  per-device batch is too small to fill a device), and FSDP's cost over
  replication (its gathers) against its memory saving (per-device
  parameters and optimizer state fall like 1/n).

Run: ``python bench/scaling.py [--devices 1 2 4 8] [--steps 20] [--reps 3] [--real]``.
Timings on a shared CPU are noisy; compare ratios taken in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

IN, HIDDEN, OUT, BATCH = 256, 1024, 256, 512


def child(n_devices: int, steps: int, reps: int, mode: str, per_call: int) -> dict:
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from artifex_rl import Trainer, TrainerConfig
    from artifex_rl.distributed import make_mesh

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.l1 = nnx.Linear(IN, HIDDEN, rngs=rngs)
            self.l2 = nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
            self.l3 = nnx.Linear(HIDDEN, OUT, rngs=rngs)

        def __call__(self, x):
            return self.l3(jax.nn.relu(self.l2(jax.nn.relu(self.l1(x)))))

    class Regression(Trainer):
        def compute_loss(self, model, batch, rng):
            return jnp.mean((model(batch["x"]) - batch["y"]) ** 2), {}

    mesh = None if mode == "single" else make_mesh(data=n_devices)
    config = TrainerConfig(
        param_sharding="fsdp" if mode == "fsdp" else "replicated", steps_per_execution=per_call, nan_policy="off"
    )
    trainer = Regression(MLP(nnx.Rngs(0)), optax.adam(1e-4), config, mesh=mesh)
    rng = np.random.default_rng(0)
    batches = [
        {"x": rng.normal(size=(BATCH, IN)).astype(np.float32), "y": rng.normal(size=(BATCH, OUT)).astype(np.float32)}
        for _ in range(per_call)
    ]
    jax.block_until_ready(trainer.train_steps(batches))  # compile
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(steps // per_call):
            metrics = trainer.train_steps(batches)
        jax.block_until_ready((metrics, trainer.train_state))
        times.append((time.perf_counter() - start) / (steps // per_call * per_call))
    params = trainer.train_state["params"]["model"]
    per_device = sum(int(np.prod(x.sharding.shard_shape(x.shape))) for x in jax.tree.leaves(params))
    return {"ms": 1e3 * statistics.median(times), "params_per_device": per_device, "platform": jax.devices()[0].platform}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps-per-execution", type=int, default=5)
    parser.add_argument("--real", action="store_true", help="use the real devices (no forced host devices)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, mode = args.child.split(":")
        print(json.dumps(child(int(n), args.steps, args.reps, mode, args.steps_per_execution)))
        return

    rows = []
    for n in args.devices:
        env = dict(os.environ)
        if not args.real:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
            env["JAX_PLATFORMS"] = "cpu"
        for mode in (["single"] if n == 1 else []) + ["replicated", "fsdp"]:
            cmd = [sys.executable, __file__, "--child", f"{n}:{mode}", "--steps", str(args.steps),
                   "--reps", str(args.reps), "--steps-per-execution", str(args.steps_per_execution)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rows.append({"devices": n, "mode": mode, **json.loads(out.stdout.strip().splitlines()[-1])})
            print(f"  measured {n} device(s), {mode}", file=sys.stderr, flush=True)
    base = next(r["ms"] for r in rows if r["mode"] == "single")
    print(f"\nMLP {IN}->{HIDDEN}->{HIDDEN}->{OUT}, global batch {BATCH}, Adam; platform {rows[0]['platform']}"
          f"{'' if args.real else ' (forced host devices: overhead, not speed-up)'}")
    print(f"{'devices':>7}  {'mode':<10}  {'ms/step':>8}  {'ratio to 1 device':>17}  {'params per device':>17}")
    for r in rows:
        print(f"{r['devices']:>7}  {r['mode']:<10}  {r['ms']:>8.2f}  {r['ms'] / base:>17.2f}  {r['params_per_device']:>17,}")


if __name__ == "__main__":
    main()
