"""Checks of the trainers on a mesh, run in a subprocess with 8 forced host devices.

``python tests/_distributed_checks.py OUT.json`` sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX is imported,
runs every check (one compile each, tiny models whose sizes the 8 devices
divide, so FSDP really splits them) and writes ``{name: {"ok", "detail"}}``.
``tests/test_distributed.py`` runs it once per session and asserts each entry.

A check compares the trainer on ``make_mesh()`` (8 devices) with the same
trainer on one device (``mesh=None``): same parameters within float tolerance
(reductions run in another order across 8 devices).
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from artifex_rl import (  # noqa: E402
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    PPOConfig,
    PPOTrainer,
    REINFORCEConfig,
    REINFORCETrainer,
)
from artifex_rl.distributed import make_mesh  # noqa: E402

OBS, HIDDEN, ACTIONS, N = 8, 16, 8, 32
RTOL, ATOL = 1e-5, 1e-6


class Policy(nnx.Module):
    """``(N, OBS) -> logits (N, ACTIONS)``; every kernel axis divisible by 8."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(OBS, HIDDEN, rngs=rngs)
        self.l2 = nnx.Linear(HIDDEN, ACTIONS, rngs=rngs)

    def __call__(self, obs):
        return self.l2(jnp.tanh(self.l1(obs)))


class ActorCritic(nnx.Module):
    """``(N, OBS) -> (logits (N, ACTIONS), value (N,))``."""

    def __init__(self, obs: int = OBS, actions: int = ACTIONS, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(obs, HIDDEN, rngs=rngs)
        self.pi = nnx.Linear(HIDDEN, actions, rngs=rngs)
        self.v = nnx.Linear(HIDDEN, 1, rngs=rngs)

    def __call__(self, obs):
        h = jnp.tanh(self.l1(obs))
        return self.pi(h), self.v(h)[..., 0]


def batch_for(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(N, OBS)).astype(np.float32)
    actions = rng.integers(0, ACTIONS, N).astype(np.int32)
    if name == "reinforce":
        return {"observations": obs, "actions": actions, "rewards": rng.normal(size=N).astype(np.float32),
                "dones": (rng.random(N) < 0.2).astype(np.float32)}
    if name == "ppo":
        return {"observations": obs, "actions": actions, "rewards": rng.normal(size=N).astype(np.float32),
                "dones": (rng.random(N) < 0.2).astype(np.float32),
                "values": rng.normal(size=N).astype(np.float32),
                "log_probs": np.full(N, -np.log(ACTIONS), np.float32)}
    if name == "grpo":  # groups of 4 contexts, each group one context
        obs = np.repeat(obs[: N // 4], 4, axis=0)
        return {"observations": obs, "actions": actions, "rewards": rng.normal(size=N).astype(np.float32)}
    chosen = rng.integers(0, ACTIONS, N).astype(np.int32)
    return {"observations": obs, "chosen": chosen, "rejected": (chosen + 1 + actions % (ACTIONS - 1)) % ACTIONS}


def make_trainer(name: str, mesh=None, **config):
    if name == "reinforce":
        return REINFORCETrainer(Policy(rngs=nnx.Rngs(0)), optax.adam(1e-2), REINFORCEConfig(**config), mesh=mesh)
    if name == "ppo":
        cfg = PPOConfig(update_epochs=1, num_minibatches=2, **config)
        return PPOTrainer(ActorCritic(rngs=nnx.Rngs(0)), optax.adam(1e-2), cfg, mesh=mesh)
    if name == "grpo":
        cfg = GRPOConfig(num_generations=4, beta=0.04, policy="categorical", **config)
        return GRPOTrainer(Policy(rngs=nnx.Rngs(0)), optax.adam(1e-2), cfg, mesh=mesh)
    return DPOTrainer(Policy(rngs=nnx.Rngs(0)), optax.adam(1e-2), DPOConfig(beta=0.5, policy="categorical", **config), mesh=mesh)


def max_rel_diff(a, b) -> float:
    """max |a - b| / (atol / rtol + |b|) over every leaf: <= rtol means allclose(rtol, atol)."""
    diffs = jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
                                  / (ATOL / RTOL + np.abs(np.asarray(y, np.float64))))),
        a, b,
    )
    return max(jax.tree.leaves(diffs), default=0.0)


def specs(tree) -> list[str]:
    return sorted({str(x.sharding.spec) for x in jax.tree.leaves(tree)})


def same(a, b, what: str) -> str:
    d = max_rel_diff(a, b)
    assert d <= RTOL, f"{what}: max relative difference {d:.3g} > {RTOL}"
    return f"{what}: max rel diff {d:.2g}"


# ----------------------------------------------------------------------------- checks
_single_step: dict[str, tuple] = {}


def check_one_step(name: str, mode: str) -> str:
    batch = batch_for(name)
    if name not in _single_step:  # the one-device reference, shared by both modes
        trainer = make_trainer(name)
        _single_step[name] = (trainer, trainer.train_step(batch))
    single, m1 = _single_step[name]
    sharded = make_trainer(name, make_mesh(), param_sharding=mode)
    m8 = sharded.train_step(batch)
    params = sharded.train_state["params"]
    assert all(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(params)), "params not on the 8 devices"
    split = [x for x in jax.tree.leaves(params) if any(s is not None for s in x.sharding.spec)]
    if mode == "fsdp":
        assert split, f"fsdp left every parameter replicated: {specs(params)}"
        opt_split = [x for x in jax.tree.leaves(sharded.train_state["opt_state"]) if any(s is not None for s in x.sharding.spec)]
        assert len(opt_split) == 2 * len(split), "Adam's mu/nu are not split like their parameters"
    else:
        assert not split, f"replicated mode split a parameter: {specs(params)}"
    assert all(x.sharding.is_fully_replicated for x in m8.values()), "metrics are not replicated"
    # The program is really partitioned: per-device gradients are summed across devices
    # (all-reduce, or reduce-scatter into FSDP shards), FSDP gathers its parameters.
    from artifex_rl.core.runner import split_batch

    arrays, static = split_batch(batch)
    hlo = sharded._compiled_fns()["step"].lower(
        sharded.train_state, sharded.frozen_states, sharded.placement.place_batch(arrays), static
    ).compile().as_text()
    wanted = ("all-gather",) if mode == "fsdp" else ("all-reduce",)
    assert all(op in hlo for op in wanted), f"no {wanted} in the compiled step"
    out = [same(single.train_state["params"], params, "params"), same(m1["loss"], m8["loss"], "loss")]
    return "; ".join(out)


def check_accumulation_and_chunks(mode: str) -> str:
    batches = [batch_for("reinforce", seed) for seed in range(4)]
    single = make_trainer("reinforce", grad_accum_steps=2, steps_per_execution=2)
    sharded = make_trainer("reinforce", make_mesh(), grad_accum_steps=2, steps_per_execution=2, param_sharding=mode)
    for trainer in (single, sharded):
        trainer.train_steps(batches[:2])
        trainer.train_steps([jax.device_put(b) for b in batches[2:]])  # device batches too
    return same(single.train_state["params"], sharded.train_state["params"], "params after 2 chunks of 2")


def check_fused_cartpole(mode: str) -> str:
    from artifex_rl.envs import GymnaxRolloutSource

    def run(mesh):
        trainer = PPOTrainer(
            ActorCritic(4, 2, rngs=nnx.Rngs(0)), optax.adam(1e-3),
            PPOConfig(steps_per_execution=2, log_every_n_steps=2, param_sharding=mode), mesh=mesh,
        )
        source = GymnaxRolloutSource("CartPole-v1", trainer, num_envs=8, num_steps=4, iterations_per_epoch=2)
        trainer.fit(source, max_steps=2)
        return trainer, source

    single, _ = run(None)
    sharded, source = run(make_mesh())
    obs = source.source_state["carry"]["obs"]
    assert obs.sharding.spec[0] == "data" and len(obs.sharding.device_set) == 8, f"envs not split: {obs.sharding}"
    assert sharded.global_step == 2
    return same(single.train_state["params"], sharded.train_state["params"], "params after a fused 2-step chunk")


def check_checkpoint(direction: str) -> str:
    """Save after 2 steps on one layout, restore on the other, 2 more steps == 4 uninterrupted steps there."""
    batches = [batch_for("reinforce", seed) for seed in range(4)]
    mesh = make_mesh()
    save_on, load_on = (mesh, None) if direction == "8to1" else (None, mesh)
    first = make_trainer("reinforce", save_on, param_sharding="fsdp")
    for b in batches[:2]:
        first.train_step(b)
    with tempfile.TemporaryDirectory() as tmp:
        path = first.save_checkpoint(os.path.join(tmp, "ckpt"))
        resumed = make_trainer("reinforce", load_on, param_sharding="fsdp")
        resumed.load_checkpoint(path)
    if load_on is None:
        assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(resumed.train_state)), "not on one device"
    else:
        kernel = resumed.train_state["params"]["model"]["l1"]["kernel"]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "data"), f"restored as {kernel.sharding}"
    for b in batches[2:]:
        resumed.train_step(b)
    straight = make_trainer("reinforce", load_on, param_sharding="fsdp")
    for b in batches:
        straight.train_step(b)
    assert resumed.global_step == 4
    out = [
        same(straight.train_state["params"], resumed.train_state["params"], "params"),
        same(straight.train_state["opt_state"], resumed.train_state["opt_state"], "opt_state"),
    ]
    return "; ".join(out)


def check_online_grpo(host_reward: bool) -> str:
    """Sampling, rewards, group advantages and the update in the sharded step (8 prompts x 4 = 32 rows)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests._lm_models import CurrentTokenLM

    vocab = 8

    def jnp_reward(tokens, conditions, completion_mask):
        hits = jnp.sum((tokens == 3) * completion_mask, axis=-1)
        return conditions + hits / jnp.maximum(jnp.sum(completion_mask, axis=-1), 1)

    def np_reward(tokens, conditions, completion_mask):
        tokens, mask = np.asarray(tokens), np.asarray(completion_mask)
        return (np.asarray(conditions) + ((tokens == 3) * mask).sum(-1) / np.maximum(mask.sum(-1), 1)).astype(np.float32)

    reward = np_reward if host_reward else jnp_reward
    prompts = np.random.default_rng(0).integers(2, vocab, (8, 2)).astype(np.int32)
    batch = {"prompts": prompts, "conditions": np.linspace(0, 1, 8).astype(np.float32)}

    def run(mesh):
        config = GRPOConfig(num_generations=4, max_new_tokens=4, eos_id=1, pad_id=0, beta=0.04)
        trainer = GRPOTrainer(CurrentTokenLM(vocab, dim=8, rngs=nnx.Rngs(0)), optax.adam(1e-2), config,
                              reward_fn=reward, mesh=mesh)
        for _ in range(2):
            metrics = trainer.train_step(batch, reward, jax.random.key(0))
        assert trainer.reward_on_host is host_reward
        return trainer, metrics

    single, m1 = run(None)
    sharded, m8 = run(make_mesh())
    return "; ".join([
        same(single.last_outputs["completions"], sharded.last_outputs["completions"], "completions"),
        same(single.train_state["params"], sharded.train_state["params"], "params after 2 online steps"),
        same(m1["loss"], m8["loss"], "loss"),
    ])


def check_two_models() -> str:
    """Two models, two optimizers, update phases with repeats and an EMA in ``extra`` (a GAN's shape)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from artifex_rl import TrainerConfig
    from tests._models import TinyMLP, TwoModelTrainer, regression_batches

    def run(mesh):
        models = {"actor": TinyMLP(8, 16, 1, rngs=nnx.Rngs(0)), "critic": TinyMLP(8, 16, 1, rngs=nnx.Rngs(1))}
        optimizers = {"actor": optax.adam(1e-2), "critic": optax.sgd(0.05, momentum=0.9)}
        trainer = TwoModelTrainer(models, optimizers, TrainerConfig(param_sharding="fsdp"), mesh=mesh)
        for batch in regression_batches(2, 32, in_dim=8):
            trainer.train_step(batch)
        return trainer

    single, sharded = run(None), run(make_mesh())
    ema = sharded.train_state["extra"]["actor_ema"]["l1"]["kernel"]
    assert ema.sharding.spec == jax.sharding.PartitionSpec(None, "data"), f"EMA placed as {ema.sharding}"
    return "; ".join([
        same(single.train_state["params"], sharded.train_state["params"], "params of both models"),
        same(single.train_state["extra"], sharded.train_state["extra"], "EMA"),
    ])


def check_diffusion(mode: str) -> str:
    """A generative trainer (DDPM with an EMA, a conv U-Net) on the mesh: two steps equal one device's."""
    from artifex_rl.generative.diffusion import DiffusionConfig, DiffusionTrainer
    from artifex_rl.models.unet import DenoiserUNet

    rng = np.random.default_rng(0)
    batches = [{"images": rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32),
                "labels": rng.integers(0, 10, 16).astype(np.int32)} for _ in range(2)]

    def run(mesh):
        model = DenoiserUNet(channels=(8, 16), emb_dim=16, rngs=nnx.Rngs(0))
        config = DiffusionConfig(num_timesteps=100, seed=0, param_sharding=mode if mesh is not None else "replicated")
        # SGD: Adam divides near-zero gradients by their own size, which turns the 8 devices' other
        # reduction order (~1e-7) into ~1e-5 parameter differences; SGD keeps the comparison at rtol 1e-5.
        trainer = DiffusionTrainer(model, optax.sgd(0.05), config, mesh=mesh)
        for batch in batches:
            trainer.train_step(batch)
        return trainer

    single, sharded = run(None), run(make_mesh())
    return "; ".join([
        same(single.train_state["params"], sharded.train_state["params"], "params"),
        same(single.ema_params, sharded.ema_params, "EMA"),
    ])


def check_summary() -> str:
    trainer = make_trainer("reinforce", make_mesh(), param_sharding="fsdp")
    text = trainer.sharding_summary(batch_for("reinforce"))
    assert "mesh {'data': 8}" in text and "param_sharding='fsdp'" in text, text
    assert "observations" in text and "per device (4, 8)" in text, text
    return text.splitlines()[0]


def main(out_path: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    checks = {}
    for name in ("reinforce", "ppo", "grpo", "dpo"):
        for mode in ("replicated", "fsdp"):
            checks[f"one_step/{name}/{mode}"] = lambda name=name, mode=mode: check_one_step(name, mode)
    checks["accumulation_and_chunks/fsdp"] = lambda: check_accumulation_and_chunks("fsdp")
    checks["fused_cartpole/replicated"] = lambda: check_fused_cartpole("replicated")
    checks["fused_cartpole/fsdp"] = lambda: check_fused_cartpole("fsdp")
    checks["checkpoint/8to1"] = lambda: check_checkpoint("8to1")
    checks["checkpoint/1to8"] = lambda: check_checkpoint("1to8")
    checks["grpo_online/jit_reward"] = lambda: check_online_grpo(False)
    checks["grpo_online/host_reward"] = lambda: check_online_grpo(True)
    checks["two_models/fsdp"] = check_two_models
    checks["diffusion/replicated"] = lambda: check_diffusion("replicated")
    checks["diffusion/fsdp"] = lambda: check_diffusion("fsdp")
    checks["summary"] = check_summary
    only = os.environ.get("ARTIFEX_CHECKS")
    results = {}
    for key, fn in checks.items():
        if only and not any(key.startswith(o) for o in only.split(",")):
            continue
        start = time.perf_counter()
        try:
            results[key] = {"ok": True, "detail": fn()}
        except Exception:  # noqa: BLE001 - every failure is reported with its traceback
            results[key] = {"ok": False, "detail": traceback.format_exc()}
        results[key]["seconds"] = round(time.perf_counter() - start, 1)
        print(key, results[key]["ok"], results[key]["seconds"], flush=True)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
