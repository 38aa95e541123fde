"""PPO on gymnax CartPole-v1: the fully compiled reference.

``run_reference`` is the yardstick for the framework's PPO: the whole training
run -- rollouts of vmapped environments, GAE, epochs x minibatches of clipped
surrogate updates, and the loop over iterations -- is a single ``jax.jit``
call, written with nothing but JAX, optax and gymnax. Whatever ``Trainer.fit``
adds on top of this (Python loop, callbacks, logging) shows up as the ratio
between the two when they are run side by side in the same process.

Settings are the usual CartPole ones: 4 envs x 128 steps per iteration,
4 epochs x 4 minibatches, Adam 2.5e-4 annealed linearly to 0, clip 0.2,
entropy 0.01, value 0.5, grad-norm 0.5, gamma 0.99, lambda 0.95, tanh MLP
64x64 with separate actor/critic and orthogonal init.

Like the classic references it treats a time-limit truncation as a terminal
state (no bootstrap), so its returns are comparable with published curves.

``run_ours`` runs the same settings through ``Trainer.fit`` (PPOTrainer + a
GymnaxRolloutSource, progress bar and metrics logger on); ``main`` runs both
per seed in one process and prints the steps/s and compile-time ratios.

Run: ``python bench/cartpole_ppo.py [--seeds 0 1 2 3 4] [--total-timesteps 500000]``.
Timings on a shared CPU are noisy; compare ratios taken in one run.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any, NamedTuple

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
Params = dict[str, Any]


class Config(NamedTuple):
    num_envs: int = 4
    num_steps: int = 128
    update_epochs: int = 4
    num_minibatches: int = 4
    lr: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64


# ---------------------------------------------------------------------------------------
# The network: two tanh MLPs written as plain parameter dicts.


def _dense(key: Array, n_in: int, n_out: int, gain: float) -> Params:
    return {
        "w": jax.nn.initializers.orthogonal(gain)(key, (n_in, n_out), jnp.float32),
        "b": jnp.zeros((n_out,), jnp.float32),
    }


def init_network(key: Array, obs_dim: int, num_actions: int, hidden: int) -> Params:
    k = jax.random.split(key, 6)
    root2 = math.sqrt(2.0)
    return {
        "actor": [
            _dense(k[0], obs_dim, hidden, root2),
            _dense(k[1], hidden, hidden, root2),
            _dense(k[2], hidden, num_actions, 0.01),
        ],
        "critic": [
            _dense(k[3], obs_dim, hidden, root2),
            _dense(k[4], hidden, hidden, root2),
            _dense(k[5], hidden, 1, 1.0),
        ],
    }


def _mlp(layers: list[Params], x: Array) -> Array:
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def apply_network(params: Params, obs: Array) -> tuple[Array, Array]:
    """``obs (..., obs_dim) -> (logits (..., A), value (...))``."""
    return _mlp(params["actor"], obs), _mlp(params["critic"], obs)[..., 0]


# ---------------------------------------------------------------------------------------
# Training


class Transition(NamedTuple):
    obs: Array  # (N, obs_dim)
    action: Array  # (N,)
    log_prob: Array  # (N,)
    value: Array  # (N,)
    reward: Array  # (N,)
    done: Array  # (N,)
    finished_return: Array  # (N,) return of the episode that ended here, else 0


def gae(rewards: Array, values: Array, dones: Array, last_value: Array, gamma: float, lam: float):
    """Time-major ``(T, N)`` GAE by a reverse scan. Returns ``(advantages, returns)``."""

    def back(carry, x):
        adv_next, value_next = carry
        reward, value, done = x
        not_done = 1.0 - done
        delta = reward + gamma * value_next * not_done - value
        adv = delta + gamma * lam * not_done * adv_next
        return (adv, value), adv

    _, adv = jax.lax.scan(
        back, (jnp.zeros_like(last_value), last_value), (rewards, values, dones), reverse=True
    )
    return adv, adv + values


def make_train(cfg: Config, total_timesteps: int):
    env, env_params = gymnax.make("CartPole-v1")
    obs_dim = env.observation_space(env_params).shape[0]
    num_actions = env.action_space(env_params).n
    batch_size = cfg.num_envs * cfg.num_steps
    minibatch_size = batch_size // cfg.num_minibatches
    num_iterations = total_timesteps // batch_size
    num_updates = num_iterations * cfg.update_epochs * cfg.num_minibatches

    lr = optax.linear_schedule(cfg.lr, 0.0, num_updates) if cfg.anneal_lr else cfg.lr
    tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr, eps=1e-5))

    def loss_fn(params: Params, mb: Transition, adv: Array, ret: Array):
        logits, value = apply_network(params, mb.obs)
        logp_all = jax.nn.log_softmax(logits)
        logp = jnp.take_along_axis(logp_all, mb.action[:, None], axis=-1)[:, 0]
        ratio = jnp.exp(logp - mb.log_prob)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg_loss = -jnp.minimum(
            ratio * adv, jnp.clip(ratio, 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps) * adv
        ).mean()
        value_clipped = mb.value + jnp.clip(value - mb.value, -cfg.clip_eps, cfg.clip_eps)
        v_loss = 0.5 * jnp.maximum((value - ret) ** 2, (value_clipped - ret) ** 2).mean()
        entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
        return pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy

    def env_step(runner, key):
        params, env_state, obs, ep_return = runner
        k_act, k_env = jax.random.split(key)
        logits, value = apply_network(params, obs)
        action = jax.random.categorical(k_act, logits)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=-1)[:, 0]
        next_obs, env_state, reward, terminated, truncated, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, cfg.num_envs), env_state, action, env_params
        )
        done = jnp.logical_or(terminated, truncated).astype(jnp.float32)
        ep_return = ep_return + reward
        tr = Transition(obs, action, log_prob, value, reward, done, ep_return * done)
        return (params, env_state, next_obs, ep_return * (1.0 - done)), tr

    def update_minibatch(state, mb):
        params, opt_state = state
        tr, adv, ret = mb
        grads = jax.grad(loss_fn)(params, tr, adv, ret)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    def update_epoch(state, key, flat):
        perm = jax.random.permutation(key, batch_size)
        shuffled = jax.tree.map(
            lambda x: x[perm].reshape(cfg.num_minibatches, minibatch_size, *x.shape[1:]), flat
        )
        state, _ = jax.lax.scan(update_minibatch, state, shuffled)
        return state, None

    def iteration(carry, key):
        params, opt_state, env_state, obs, ep_return = carry
        k_roll, k_epochs = jax.random.split(key)
        (_, env_state, obs, ep_return), traj = jax.lax.scan(
            env_step,
            (params, env_state, obs, ep_return),
            jax.random.split(k_roll, cfg.num_steps),
        )
        _, last_value = apply_network(params, obs)
        adv, ret = gae(traj.reward, traj.value, traj.done, last_value, cfg.gamma, cfg.gae_lambda)
        flat = jax.tree.map(lambda x: x.reshape(batch_size, *x.shape[2:]), (traj, adv, ret))
        (params, opt_state), _ = jax.lax.scan(
            lambda s, k: update_epoch(s, k, flat),
            (params, opt_state),
            jax.random.split(k_epochs, cfg.update_epochs),
        )
        metrics = {"return_sum": traj.finished_return.sum(), "episodes": traj.done.sum()}
        return (params, opt_state, env_state, obs, ep_return), metrics

    def init_carry(key: Array):
        k_net, k_reset = jax.random.split(key)
        params = init_network(k_net, obs_dim, num_actions, cfg.hidden)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_reset, cfg.num_envs), env_params
        )
        return (params, tx.init(params), env_state, obs, jnp.zeros((cfg.num_envs,)))

    def train(key: Array):
        k_init, k_iter = jax.random.split(key)
        carry, metrics = jax.lax.scan(iteration, init_carry(k_init), jax.random.split(k_iter, num_iterations))
        return carry[0], metrics

    train.init_carry, train.iteration = init_carry, iteration  # for the paired timing
    return train, num_iterations * batch_size


def run_reference(seed: int = 0, total_timesteps: int = 500_000, cfg: Config | None = None) -> dict:
    """Compile and run the reference PPO; return timings and the final return.

    Returns a dict with ``compile_s``, ``run_s``, ``env_steps`` (rounded down
    to whole iterations), ``steps_per_s`` (run only), ``final_return`` (mean
    return of episodes finished in the last 5% of iterations) and the
    per-iteration ``returns`` curve (host numpy).
    """
    train, env_steps = make_train(Config() if cfg is None else cfg, total_timesteps)
    key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    compiled = jax.jit(train).lower(key).compile()
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    params, metrics = jax.block_until_ready(compiled(key))
    run_s = time.perf_counter() - t0

    return_sum = jax.device_get(metrics["return_sum"])
    episodes = jax.device_get(metrics["episodes"])
    tail = max(1, len(return_sum) // 20)
    final_return = float(return_sum[-tail:].sum() / max(episodes[-tail:].sum(), 1.0))
    curve = return_sum / episodes.clip(min=1.0)
    return {
        "compile_s": compile_s,
        "run_s": run_s,
        "env_steps": env_steps,
        "steps_per_s": env_steps / run_s,
        "final_return": final_return,
        "returns": curve,
        "params": params,
    }


def run_ours(seed: int = 0, total_timesteps: int = 500_000, run_dir: str | None = None) -> dict:
    """The same PPO through ``Trainer.fit`` with the progress bar and the metrics logger on.

    Returns the recipe's summary (``compile_seconds``, ``sps``, ...) plus
    ``final_return``: the mean of the logged ``episode_return`` over the last
    5% of logging intervals (the reference's definition, at log granularity).
    """
    import tempfile

    from artifex_rl.callbacks import MetricsLogger, ProgressBarCallback
    from artifex_rl.events import Callback
    from artifex_rl.recipes.cartpole import EnvRunSettings, build_ppo, train
    from artifex_rl.recipes.env_defaults import PPO_SETTINGS
    from artifex_rl.rl import PPOConfig

    class Returns(Callback):
        log_may_lag = True  # only records

        def __init__(self) -> None:
            self.curve: list[float] = []

        def on_log(self, trainer, metrics, step) -> None:
            if "episode_return" in metrics:
                self.curve.append(metrics["episode_return"])

    cfg = Config()
    settings = EnvRunSettings(
        "CartPole-v1", total_timesteps, cfg.num_envs, cfg.num_steps, cfg.lr, cfg.anneal_lr, (cfg.hidden,) * 2,
        steps_per_execution=PPO_SETTINGS["discrete"]["steps_per_execution"],  # the recipe's iterations per call
    )
    config = PPOConfig(
        log_every_n_steps=settings.log_every, seed=seed, steps_per_execution=settings.steps_per_execution
    )
    trainer, source = build_ppo(settings, config, seed)
    returns = Returns()
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = [returns, MetricsLogger(run_dir or tmp, plot=False), ProgressBarCallback()]
        summary = train(trainer, source, settings, callbacks)
    tail = max(1, len(returns.curve) // 20)
    summary["final_return"] = float(np.mean(returns.curve[-tail:]))
    summary["trace_count"] = trainer.trace_count  # compilations of the (fused) training step
    return summary


def paired(blocks: int, k: int = 50) -> None:
    """The reference's iteration and ours' fused runner in alternating blocks of ``k`` iterations.

    Whole runs, one after the other, mostly measure this machine's drift
    (+-20% over seconds); here both stay compiled in this process and take
    turns, so each pair sees the same machine. The reference's ``k``
    iterations run in one ``lax.scan`` (not donated, as its ``train`` runs
    them), ours through ``Trainer.run_chunk`` as ``fit`` calls it.
    """
    import statistics

    from artifex_rl.recipes.env_runs import build_ppo, resolve

    train, _ = make_train(Config(), 500_000)
    chunk = jax.jit(lambda carry, keys: jax.lax.scan(train.iteration, carry, keys)[0])
    state = {"carry": jax.jit(train.init_carry)(jax.random.PRNGKey(0)), "key": jax.random.PRNGKey(1)}

    def reference_block():
        state["key"], sub = jax.random.split(state["key"])
        state["carry"] = chunk(state["carry"], jax.random.split(sub, k))
        return state["carry"]

    settings, config, _ = resolve("ppo", "CartPole-v1", None, dict(steps_per_execution=k), 0)
    trainer, source = build_ppo(settings, config, 0)
    trainer.fitting = True  # run_chunk as fit calls it

    def ours_block():
        trainer.run_chunk(source=source, size=k)
        return trainer.train_state

    sides = {"reference": reference_block, "fit's runner": ours_block}
    for run in sides.values():
        jax.block_until_ready(run())
    times = {name: [] for name in sides}
    for b in range(blocks):
        for name in (list(sides) if b % 2 == 0 else list(sides)[::-1]):
            tic = time.perf_counter()
            jax.block_until_ready(sides[name]())
            times[name].append((time.perf_counter() - tic) / k * 1e3)
    ratio = statistics.median(r / o for r, o in zip(times["reference"], times["fit's runner"], strict=True))
    for name, values in times.items():
        print(f"{name:14s} median {statistics.median(values):.2f} ms per iteration ({blocks} blocks of {k})")
    print(f"fit's runner / reference speed (median of pairs): {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--reference-only", action="store_true")
    parser.add_argument("--paired", type=int, default=0, metavar="BLOCKS",
                        help="also time the reference's iteration against fit's runner in BLOCKS alternating pairs")
    args = parser.parse_args()
    print(f"devices: {jax.devices()}")
    if args.paired:
        paired(args.paired)
    rows = []
    for seed in args.seeds:
        # Interleave: reference then ours, per seed, in this one process.
        ref = run_reference(seed, args.total_timesteps)
        print(
            f"seed {seed} reference  compile {ref['compile_s']:.2f} s | run {ref['run_s']:.2f} s | "
            f"{ref['steps_per_s']:,.0f} env steps/s | final return {ref['final_return']:.1f}",
            flush=True,
        )
        if args.reference_only:
            continue
        ours = run_ours(seed, args.total_timesteps)
        print(
            f"seed {seed} fit()      compile {ours['compile_seconds']:.2f} s | wall {ours['wall_seconds']:.2f} s | "
            f"{ours['sps']:,.0f} env steps/s | final return {ours['final_return']:.1f} | "
            f"traces {ours['trace_count']}",
            flush=True,
        )
        rows.append((ref, ours))
    if rows:
        sps_ratio = np.median([o["sps"] / r["steps_per_s"] for r, o in rows])
        compile_ratio = np.median([o["compile_seconds"] / r["compile_s"] for r, o in rows])
        solved = sum(o["final_return"] >= 475 for _, o in rows)
        print(f"\nfit() / reference env steps/s: {sps_ratio:.2f}x (target >= 0.8)")
        print(f"fit() / reference compile time: {compile_ratio:.2f}x (target <= 1.5)")
        print(f"seeds reaching mean return >= 475 with fit(): {solved}/{len(rows)}")


if __name__ == "__main__":
    main()
