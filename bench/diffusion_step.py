"""DiffusionTrainer's fit step vs a hand-written donated ``jax.jit`` step of the same model and loss.

Both run the DDPM epsilon loss (cosine schedule, T = 1000, label dropout 0.1)
of the digits U-Net (channels (32, 64)), Adam, and the parameters' EMA, on
the same batches of 128 digits. Timed interleaved in rounds (both see the
same machine load); the ratio of the medians is printed.

    PYTHONPATH=. python bench/diffusion_step.py --steps 50 --rounds 3
    PYTHONPATH=. python bench/diffusion_step.py --sampler   # DDIM scan: rolled vs unroll=True
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl.data import ArrayDataLoader, load_digits_split
from artifex_rl.generative.diffusion import DiffusionConfig, DiffusionTrainer
from artifex_rl.generative.schedules import make_schedule
from artifex_rl.models.unet import DenoiserUNet


def hand_written(model: nnx.Module, tx, ema_decay: float, drop: float):
    graphdef, params = nnx.split(model, nnx.Param)
    alpha_bars = jnp.asarray(make_schedule("cosine", 1000).alpha_bars)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, images, labels, key):
        params, ema, opt_state = state
        k_t, k_n, k_d = jax.random.split(key, 3)
        steps = jax.random.randint(k_t, (images.shape[0],), 0, 1000)
        eps = jax.random.normal(k_n, images.shape)
        ab = alpha_bars[steps][:, None, None, None]
        x_t = jnp.sqrt(ab) * images + jnp.sqrt(1 - ab) * eps
        labels = jnp.where(jax.random.uniform(k_d, labels.shape) < drop, 10, labels)

        def loss_fn(p):
            pred = nnx.merge(graphdef, p)(x_t, steps / 1000.0, labels)
            return jnp.mean(jnp.square(pred - eps))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
        return (params, ema, opt_state), loss

    state = (params, jax.tree.map(jnp.copy, params), tx.init(params))
    return state, step


def sampler_unroll(num_samples: int = 200, num_steps: int = 20) -> None:
    """Compile and run time of the U-Net DDIM sampler (guidance 2) with a rolled and an unrolled scan."""
    from artifex_rl.generative.samplers import diffusion_sample

    model = DenoiserUNet(rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    sched = make_schedule("cosine", 1000)
    labels = jnp.arange(num_samples, dtype=jnp.int32) % 10
    for unroll in (1, True):

        @jax.jit
        def run(params, key, unroll=unroll):
            fn = nnx.merge(graphdef, params)
            noise = jax.random.normal(key, (num_samples, 8, 8, 1))
            return diffusion_sample(fn, sched, noise, key, labels, num_steps=num_steps, guidance=2.0,
                                    null_label=10, unroll=unroll)

        tic = time.perf_counter()
        jax.block_until_ready(run(params, jax.random.key(0)))
        first = time.perf_counter() - tic
        tic = time.perf_counter()
        for i in range(3):
            jax.block_until_ready(run(params, jax.random.key(i + 1)))
        print(f"unroll={unroll}: first call (compile + run) {first:.1f}s, run {(time.perf_counter() - tic) / 3:.2f}s",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sampler", action="store_true", help="time the sampler's scan instead")
    args = parser.parse_args()
    if args.sampler:
        sampler_unroll()
        return
    batches = list(ArrayDataLoader(load_digits_split().train(), 128, seed=0))
    tx = optax.adam(1e-3)
    # nan_policy="off": the bare step, as the hand-written one has no finiteness check.
    trainer = DiffusionTrainer(DenoiserUNet(rngs=nnx.Rngs(0)), tx,
                               DiffusionConfig(log_every_n_steps=10**9, nan_policy="off"))
    state, step = hand_written(DenoiserUNet(rngs=nnx.Rngs(0)), tx, 0.995, 0.1)
    key = jax.random.key(0)
    # Compile both.
    trainer.train_step(batches[0])
    state, loss = step(state, batches[0]["images"], batches[0]["labels"], key)
    jax.block_until_ready((trainer.train_state, state))
    times: dict[str, list[float]] = {"trainer": [], "hand": []}
    for _ in range(args.rounds):
        tic = time.perf_counter()
        for i in range(args.steps):
            trainer.train_step(batches[i % len(batches)])
        jax.block_until_ready(trainer.train_state)
        times["trainer"].append((time.perf_counter() - tic) / args.steps)
        tic = time.perf_counter()
        for i in range(args.steps):
            b = batches[i % len(batches)]
            state, loss = step(state, b["images"], b["labels"], jax.random.fold_in(key, i))
        jax.block_until_ready(state)
        times["hand"].append((time.perf_counter() - tic) / args.steps)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"per step: trainer {med['trainer'] * 1e3:.1f} ms, hand-written jit {med['hand'] * 1e3:.1f} ms "
          f"(rounds: {[round(t * 1e3, 1) for t in times['trainer']]} vs {[round(t * 1e3, 1) for t in times['hand']]})")
    print(f"ratio trainer / hand-written: {med['trainer'] / med['hand']:.3f}x (target <= 1.05x)")


if __name__ == "__main__":
    main()
