"""The GAN's two-optimizer ``fit`` step against a hand-written donated ``jax.jit`` step.

Model: the digits recipe's conv Generator (latent 32, width 32) and
Discriminator (width 32), batch 64 of real digits, non-saturating loss, Adam
(2e-4, b1 0.5) for both, ``n_critic`` discriminator updates then one generator
update per step. Both sides consume the same pre-built device batches:

* ``baseline``: params and both optax states as plain pytrees, one
  ``jax.jit`` step with them donated, doing the same updates with the same
  loss code (``discriminator_loss``/``generator_loss``), a Python ``for`` loop.
* ``fit``: ``GANTrainer.fit`` (``nan_policy="off"``, no callbacks, log every 50).

Interleaved, ``--reps`` times each; the median time per step is compared.
Run: ``python bench/gan_step.py [--steps 200] [--reps 3] [--n-critic 1]``.
Timings on a shared CPU are noisy; only the ratio taken in one run means much.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import optax
from flax import nnx

from artifex_rl.data import load_digits_split
from artifex_rl.generative.gan import GANConfig, GANTrainer, discriminator_loss, generator_loss
from artifex_rl.models import Discriminator, Generator

LATENT, WIDTH, BATCH, N_BATCHES = 32, 32, 64, 10


def _models():
    return {"generator": Generator(LATENT, width=WIDTH, rngs=nnx.Rngs(0)),
            "discriminator": Discriminator(width=WIDTH, rngs=nnx.Rngs(1))}


def _tx():
    return optax.adam(2e-4, b1=0.5)


def make_baseline(n_critic: int):
    """The hand-written step and its initial state (params as ``nnx.State`` pytrees, split once)."""
    models = _models()
    g_def, g_p = nnx.split(models["generator"])
    d_def, d_p = nnx.split(models["discriminator"])
    tx = _tx()
    state = (g_p, d_p, tx.init(g_p), tx.init(d_p), jax.random.key(0))

    def step(state, real):
        g_p, d_p, g_o, d_o, key = state
        for _ in range(n_critic):
            key, zk = jax.random.split(key)
            z = jax.random.normal(zk, (real.shape[0], LATENT))
            fake = jax.lax.stop_gradient(nnx.merge(g_def, g_p)(z))

            def d_loss(d_p, fake):
                d = nnx.merge(d_def, d_p)
                return discriminator_loss(d(real), d(fake), "non_saturating")

            loss_d, grads = jax.value_and_grad(d_loss)(d_p, fake)
            updates, d_o = tx.update(grads, d_o, d_p)
            d_p = optax.apply_updates(d_p, updates)
        key, zk = jax.random.split(key)
        z = jax.random.normal(zk, (real.shape[0], LATENT))

        def g_loss(g_p):
            return generator_loss(nnx.merge(d_def, d_p)(nnx.merge(g_def, g_p)(z)), "non_saturating")

        loss_g, grads = jax.value_and_grad(g_loss)(g_p)
        updates, g_o = tx.update(grads, g_o, g_p)
        g_p = optax.apply_updates(g_p, updates)
        return (g_p, d_p, g_o, d_o, key), {"d": loss_d, "g": loss_g}

    return jax.jit(step, donate_argnums=(0,)), state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n-critic", type=int, default=1)
    args = parser.parse_args()
    images = load_digits_split().train_images
    batches = [{"images": jax.device_put(images[i * BATCH:(i + 1) * BATCH])} for i in range(N_BATCHES)]

    step, state = make_baseline(args.n_critic)

    config = GANConfig(loss_type="non_saturating", n_critic=args.n_critic, latent_dim=LATENT, nan_policy="off",
                       log_every_n_steps=50)
    trainer = GANTrainer(_models(), {"generator": _tx(), "discriminator": _tx()}, config)

    def run_baseline():
        nonlocal state
        start = time.perf_counter()
        for i in range(args.steps):
            state, _ = step(state, batches[i % N_BATCHES]["images"])
        jax.block_until_ready(state)
        return (time.perf_counter() - start) / args.steps

    def run_fit():
        start = time.perf_counter()
        trainer.fit(batches, max_steps=trainer.global_step + args.steps, max_epochs=None)
        jax.block_until_ready(trainer.train_state)
        return (time.perf_counter() - start) / args.steps

    run_baseline(), run_fit()  # compile and warm up
    times: dict[str, list[float]] = {"baseline": [], "fit": []}
    for _ in range(args.reps):
        times["baseline"].append(run_baseline())
        times["fit"].append(run_fit())
    base, fit = statistics.median(times["baseline"]), statistics.median(times["fit"])
    print(f"n_critic={args.n_critic} batch={BATCH} steps={args.steps} reps={args.reps}")
    print(f"baseline (hand-written donated jit): {base * 1e3:.2f} ms/step")
    print(f"GANTrainer.fit:                      {fit * 1e3:.2f} ms/step")
    print(f"ratio fit / baseline: {fit / base:.3f}x (target <= 1.05x)")


if __name__ == "__main__":
    main()
