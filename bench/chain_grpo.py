"""One GRPO iteration on a diffusion sampler through ``fit`` vs a hand-fused pure-JAX loop (issue 12).

Both do, in one compiled call per iteration: roll out ``P x G`` DDIM chains
(eta 1, ``S`` steps) of the digits U-Net (channels (32, 64)), reward the
samples (the ink reward), compute group-normalised advantages, score every
stochastic step of the stored chains with the steps flattened into the batch,
add the closed-form KL to a frozen reference (beta 0.01), and take an Adam
step on the clipped surrogate (one iteration per batch: ratio 1). The
hand-fused loop is what a user would write from the DDPO / Flow-GRPO papers
with ``jax.jit`` and ``donate_argnums``; ``fit`` runs GRPOTrainer with a
DenoisingChainPolicy and ``nan_policy="off"`` (the hand loop has no
finiteness check; the default check is timed too). Timed interleaved in
rounds, so both see the same machine load; the ratio of the medians is
printed.

Then the peak memory of the trainer's compiled step (XLA ``memory_analysis``:
arguments + outputs + temporaries) as the chain length grows.

    PYTHONPATH=. python bench/chain_grpo.py --iterations 20 --rounds 3
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

from artifex_rl import GRPOConfig, GRPOTrainer
from artifex_rl.generative import DenoisingChainPolicy, InkReward
from artifex_rl.generative.samplers import ddim_step_mean_std, diffusion_sample
from artifex_rl.generative.schedules import make_schedule, sampling_timesteps
from artifex_rl.models.unet import DenoiserUNet

PROMPTS, GROUP, BETA, CLIP = 4, 8, 0.01, 0.2


def hand_fused(model: nnx.Module, tx, schedule, num_steps: int):
    """The whole GRPO iteration as one donated ``jax.jit`` function, written from the papers."""
    graphdef, params = nnx.split(model, nnx.Param)
    ref_params = jax.tree.map(jnp.copy, params)
    ks = sampling_timesteps(schedule.num_timesteps, num_steps)
    ab_all = np.asarray(schedule.alpha_bars)
    t_all = jnp.asarray(ks / schedule.num_timesteps, jnp.float32)
    ab = jnp.asarray(ab_all[ks])
    ab_next = jnp.asarray(np.concatenate([ab_all[ks[1:]], [1.0]]), jnp.float32)
    stochastic = num_steps - 1  # the last DDIM step (to alpha_bar = 1) is deterministic
    reward = InkReward()

    def step_means(p, x_t, idx):
        pred = nnx.merge(graphdef, p)(x_t, t_all[idx], None)
        shape = (-1, 1, 1, 1)
        return ddim_step_mean_std(x_t, pred, ab[idx].reshape(shape), ab_next[idx].reshape(shape), eta=1.0,
                                  prediction="epsilon", clip_x0=True)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def iteration(params, opt_state, key):
        k_noise, k_steps = jax.random.split(key)
        b = PROMPTS * GROUP
        noise = jax.random.normal(k_noise, (b, 8, 8, 1))
        model_fn = lambda x, t, y: nnx.merge(graphdef, params)(x, t, y)  # noqa: E731
        chain = diffusion_sample(model_fn, schedule, noise, k_steps, None, num_steps=num_steps, method="ddim",
                                 eta=1.0, return_chain=True)
        rewards = reward(chain["x0"]).reshape(PROMPTS, GROUP)
        adv = ((rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, keepdims=True) + 1e-4)).reshape(-1)
        states = jax.lax.stop_gradient(chain["latents"][:stochastic + 1])  # (S', B, ...)
        x_t = jnp.moveaxis(states[:-1], 0, 1).reshape(b * stochastic, 8, 8, 1)
        x_next = jnp.moveaxis(states[1:], 0, 1).reshape(b * stochastic, 8, 8, 1)
        idx = jnp.tile(jnp.arange(stochastic), b)
        ref_mean, _ = step_means(ref_params, x_t, idx)

        def loss_fn(p):
            mean, std = step_means(p, x_t, idx)
            lp = jnp.mean(-0.5 * jnp.square((x_next - mean) / std) - jnp.log(std) - 0.5 * np.log(2 * np.pi),
                          axis=(1, 2, 3)).reshape(b, stochastic)
            ratio = jnp.exp(lp - jax.lax.stop_gradient(lp))
            a = adv[:, None]
            surrogate = -jnp.minimum(ratio * a, jnp.clip(ratio, 1 - CLIP, 1 + CLIP) * a)
            kl = jnp.mean(jnp.square(mean - ref_mean) / (2 * jnp.square(std)), axis=(1, 2, 3)).reshape(b, stochastic)
            return jnp.mean(jnp.mean(surrogate + BETA * kl, axis=1))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, (loss, rewards.mean())

    return (params, tx.init(params)), iteration


def make_trainer(schedule, num_steps: int, nan_policy: str) -> GRPOTrainer:
    policy = DenoisingChainPolicy.diffusion(schedule, num_steps=num_steps, eta=1.0)
    config = GRPOConfig(num_generations=GROUP, beta=BETA, clip_param=CLIP, entropy_coeff=0.0, seed=0,
                        log_every_n_steps=10**9, nan_policy=nan_policy)
    return GRPOTrainer(DenoiserUNet(num_classes=None, rngs=nnx.Rngs(0)), optax.adam(1e-4), config, policy=policy,
                       reward_fn=InkReward())


def peak_memory(schedule, chain_lengths) -> None:
    print("\npeak memory of GRPOTrainer's compiled step (XLA memory_analysis), P x G = "
          f"{PROMPTS} x {GROUP} chains:")
    print("chain steps | arguments MB | outputs MB | temporaries MB")
    for s in chain_lengths:
        trainer = make_trainer(schedule, s, "off")
        from artifex_rl.core.runner import split_batch  # noqa: PLC0415 - bench-only reach into the step

        arrays, static = split_batch({"observations": np.zeros((PROMPTS,), np.int32)})
        compiled = trainer._compiled_fns()["step"].lower(
            trainer.train_state, trainer.frozen_states, arrays, static).compile()
        mem = compiled.memory_analysis()
        mb = 1 / 2**20
        print(f"{s:11d} | {mem.argument_size_in_bytes * mb:12.1f} | {mem.output_size_in_bytes * mb:10.1f} | "
              f"{mem.temp_size_in_bytes * mb:14.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chain-steps", type=int, default=10)
    parser.add_argument("--memory-lengths", type=int, nargs="*", default=[5, 10, 20, 40])
    args = parser.parse_args()
    schedule = make_schedule("cosine", 1000)
    prompts = {"observations": np.zeros((PROMPTS,), np.int32)}
    loader = [prompts] * args.iterations
    trainers = {"fit": make_trainer(schedule, args.chain_steps, "off"),
                "fit_nan_check": make_trainer(schedule, args.chain_steps, "raise")}
    state, iteration = hand_fused(DenoiserUNet(num_classes=None, rngs=nnx.Rngs(0)), optax.adam(1e-4), schedule,
                                  args.chain_steps)
    key = jax.random.key(0)
    for trainer in trainers.values():  # compile
        trainer.fit([prompts], max_steps=1)
    params, opt_state, _ = iteration(*state, key)
    jax.block_until_ready(params)
    times: dict[str, list[float]] = {name: [] for name in (*trainers, "hand")}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            tic = time.perf_counter()
            trainer.fit(loader, max_steps=trainer.global_step + args.iterations)
            jax.block_until_ready(trainer.train_state)
            times[name].append((time.perf_counter() - tic) / args.iterations)
        tic = time.perf_counter()
        for i in range(args.iterations):
            params, opt_state, _ = iteration(params, opt_state, jax.random.fold_in(key, i))
        jax.block_until_ready(params)
        times["hand"].append((time.perf_counter() - tic) / args.iterations)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"per GRPO iteration ({PROMPTS} x {GROUP} chains of {args.chain_steps} DDIM steps): "
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items()))
    print(f"ratio fit / hand-fused: {med['fit'] / med['hand']:.3f}x (target <= 1.1x); "
          f"with the default NaN check: {med['fit_nan_check'] / med['hand']:.3f}x")
    peak_memory(schedule, args.memory_lengths)


if __name__ == "__main__":
    main()
