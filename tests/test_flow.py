"""FlowTrainer: the flow-matching target vs numpy, OT pairing, ODE/SDE samplers on a Gaussian with exact velocity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy.optimize import linear_sum_assignment

from artifex_rl.generative import samplers
from artifex_rl.generative.flow import FlowConfig, FlowTrainer, greedy_assignment, ot_pair_noise
from tests._denoisers import TinyDenoiser, digit_batches


def make_trainer(**config) -> FlowTrainer:
    return FlowTrainer(TinyDenoiser(rngs=nnx.Rngs(0)), optax.adam(1e-2), FlowConfig(log_every_n_steps=1, **config))


def test_flow_matching_loss_matches_numpy():
    trainer = make_trainer(cond_drop_prob=0.0)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (5, 8, 8, 1)).astype(np.float32)
    batch = {"images": jnp.asarray(x0), "labels": jnp.arange(5, dtype=jnp.int32)}
    w = rng.normal(size=(1, 8, 8, 1)).astype(np.float32)
    model = lambda x, t, labels: jnp.sin(x * w) * t[:, None, None, None] - 0.1 * labels[:, None, None, None]  # noqa: E731
    key = jax.random.key(3)
    loss, _ = trainer.compute_loss(model, batch, key)
    k_t, k_noise, _ = jax.random.split(key, 3)
    t = np.asarray(jax.random.uniform(k_t, (5,)), np.float64).reshape(-1, 1, 1, 1)
    z = np.asarray(jax.random.normal(k_noise, x0.shape), np.float64)
    x_t = (1 - t) * x0 + t * z  # t = 1 is noise
    pred = np.sin(x_t * w) * t - 0.1 * np.arange(5).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(float(loss.total / loss.count), np.mean((pred - (z - x0)) ** 2), rtol=1e-4)


def test_greedy_assignment_is_a_permutation_close_to_the_exact_plan():
    rng = np.random.default_rng(1)
    ratios, gains = [], []
    for _ in range(5):
        x, z = rng.normal(size=(2, 64, 16))
        cost = ((x[:, None] - z[None]) ** 2).sum(-1)
        perm = np.asarray(greedy_assignment(jnp.asarray(cost), jnp.asarray(rng.permutation(64))))
        assert sorted(perm) == list(range(64))
        rows, cols = linear_sum_assignment(cost)
        exact = cost[rows, cols].sum()
        ratios.append(cost[np.arange(64), perm].sum() / exact)
        gains.append(np.trace(cost) / exact)
    # Measured: the independent pairing costs ~2x the optimum, greedy ~1.14-1.19x.
    assert max(ratios) < 1.25 and min(gains) > 1.5, (ratios, gains)


def test_ot_pairing_in_prepare_batch_permutes_the_noise():
    trainer = make_trainer(ot_pairing=True)
    batch = digit_batches(1, 32)[0]
    out = trainer.prepare_batch(None, dict(batch), jax.random.key(0), {})
    k_noise, k_order = jax.random.split(jax.random.key(0))
    noise = np.asarray(jax.random.normal(k_noise, batch["images"].shape))
    paired = np.asarray(out["noise"])
    order = [int(np.argmin(((noise - row) ** 2).sum((1, 2, 3)))) for row in paired]
    assert sorted(order) == list(range(32))
    np.testing.assert_allclose(paired, np.asarray(ot_pair_noise(jnp.asarray(batch["images"]), jnp.asarray(noise), k_order)))
    cost = lambda z: np.sum((z - batch["images"]) ** 2)  # noqa: E731
    assert cost(paired) < 0.9 * cost(noise)
    trainer.train_step(batch)  # the pairing runs inside the compiled step


# A 1-D Gaussian data set x0 ~ N(0, s^2) has the exact velocity of the linear path:
# x_t ~ N(0, V_t), V_t = (1 - t)^2 s^2 + t^2, and v(x, t) = E[z - x0 | x_t] = (t - (1 - t) s^2) / V_t x.
S = 0.5


def exact_velocity(x, t, labels):
    tb = t[:, None, None, None]
    return (tb - (1 - tb) * S**2) / ((1 - tb) ** 2 * S**2 + tb**2) * x


def test_heun_ode_transports_noise_to_the_data_distribution():
    noise = jax.random.normal(jax.random.key(0), (4000, 8, 8, 1))
    euler = samplers.flow_ode_sample(exact_velocity, noise, num_steps=8, method="euler")
    heun = samplers.flow_ode_sample(exact_velocity, noise, num_steps=8, method="heun")
    # Exact flow map: x0 = s * z (a linear ODE); Heun is second order.
    err_euler = float(jnp.max(jnp.abs(euler - S * noise)))
    err_heun = float(jnp.max(jnp.abs(heun - S * noise)))
    assert err_heun < 0.2 * err_euler and err_heun < 0.02


@pytest.mark.parametrize("a", [0.5, 1.0])
def test_sde_sampler_keeps_the_ode_marginals(a):
    noise = jax.random.normal(jax.random.key(1), (2000, 8, 8, 1))
    out = samplers.flow_sde_sample(exact_velocity, noise, jax.random.key(2), num_steps=100, noise_level=a,
                                   return_chain=True, unroll=1)
    ts = np.asarray(out["times"])
    for i in (25, 50, 75, 100):  # the std of x_t matches sqrt(V_t) along the chain
        want = np.sqrt((1 - ts[i]) ** 2 * S**2 + ts[i] ** 2)
        assert abs(float(jnp.std(out["latents"][i])) - want) < 0.05 * want + 0.01, (i, ts[i])
    assert float(jnp.mean(jnp.abs(out["x0"] - S * noise))) > 0.05  # it is stochastic


def test_sde_step_mean_std_match_the_formula():
    rng = np.random.default_rng(2)
    x, v = rng.normal(size=(2, 3, 8, 8, 1)).astype(np.float32)
    t, s, a = 0.6, 0.55, 0.7
    mean, std = samplers.flow_sde_step_mean_std(x, v, jnp.float32(t), jnp.float32(s), noise_level=a, t_cap=jnp.float32(0.9))
    sigma = a * np.sqrt(t / (1 - t))
    dt = s - t
    np.testing.assert_allclose(mean, x + (v + sigma**2 / (2 * t) * (x + (1 - t) * v)) * dt, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(std), sigma * np.sqrt(-dt), rtol=1e-5)
    # The first step (t = 1) reads 1 - t at the cap: finite.
    _, std1 = samplers.flow_sde_step_mean_std(x, v, jnp.float32(1.0), jnp.float32(0.9), noise_level=a,
                                              t_cap=jnp.float32(0.9))
    np.testing.assert_allclose(float(std1), a * np.sqrt(1 / 0.1) * np.sqrt(0.1), rtol=1e-5)


@pytest.mark.parametrize("method", ["heun", "sde"])
def test_flow_sampler_inside_jit_equals_the_standalone_one_and_uses_the_ema(method):
    trainer = make_trainer(ema_decay=0.5)
    for batch in digit_batches(2):
        trainer.train_step(batch)
    labels = jnp.array([1, 2, 10], jnp.int32)
    opts = dict(num_steps=6, method=method, guidance=1.5, noise_level=0.7 if method == "sde" else 0.0)
    standalone = trainer.sample(jax.random.key(5), labels, **opts)
    run = trainer.sampler(**opts)
    ms = trainer.train_state["model_state"]["model"]
    inside = jax.jit(lambda p, k: run(p, ms, k, labels) * 1.0)(trainer.ema_params, jax.random.key(5))
    np.testing.assert_allclose(inside, standalone, atol=1e-6)
    raw = trainer.sample(jax.random.key(5), labels, use_ema=False, **opts)
    assert float(jnp.max(jnp.abs(raw - standalone))) > 0  # the EMA is not the raw parameters


def test_flow_learns_a_real_task():
    """A few hundred cheap steps on the digits lower the held-out flow-matching loss."""
    from artifex_rl.data import ArrayDataLoader, load_digits_split

    split = load_digits_split()
    trainer = FlowTrainer(TinyDenoiser(hidden=128, rngs=nnx.Rngs(0)), optax.adam(3e-3),
                          FlowConfig(log_every_n_steps=50, cond_drop_prob=0.1, nan_policy="off"))
    held = {"images": jnp.asarray(split.heldout_images), "labels": jnp.asarray(split.heldout_labels)}

    def heldout_loss():
        model = trainer.model
        loss, _ = jax.jit(lambda b: trainer.compute_loss(model, b, jax.random.key(9)))(held)
        return float(loss.total / loss.count)

    before = heldout_loss()
    trainer.fit(ArrayDataLoader(split.train(), 128, seed=0), max_steps=300)
    after = heldout_loss()
    assert after < 0.8 * before, (before, after)


def test_unknown_sampler_method_and_bad_labels():
    trainer = make_trainer()
    with pytest.raises(ValueError, match="method"):
        trainer.sampler(method="rk4")
    with pytest.raises(ValueError, match=r"batch\['images'\]"):
        trainer.train_step({"images": np.zeros((2, 8, 8, 3), np.float32), "labels": np.zeros(2, np.int32)})
    with pytest.raises(ValueError, match=r"batch\['labels'\].*\[0, 10\)"):
        trainer.train_step({"images": np.zeros((2, 8, 8, 1), np.float32), "labels": np.array([-1, 3])})


@pytest.mark.parametrize("recipe", ["digits-flow"])  # digits-diffusion shares the code; each costs ~1 CPU-minute
def test_recipe_runs_end_to_end_and_writes_its_files(recipe, tmp_path, monkeypatch):
    """The CLI recipe with tiny settings (a small U-Net, 3 steps, 2 sampling steps, a quick classifier)."""
    import dataclasses
    import json
    import os

    from artifex_rl import cli
    from artifex_rl.metrics import train_digit_classifier
    from artifex_rl.recipes.digits import common
    from artifex_rl.recipes.digits import diffusion as recipes

    for name in ("DIFFUSION", "FLOW"):
        settings = getattr(recipes, name)
        tiny = dataclasses.replace(settings, channels=(8, 8), sampler={**settings.sampler, "num_steps": 2})
        monkeypatch.setattr(recipes, name, tiny)
    quick = train_digit_classifier(0, 4, steps=5, cache_dir=str(tmp_path / "classifier"))
    monkeypatch.setattr(common, "evaluation_classifier", lambda run_dir: quick)
    run_dir = tmp_path / "run"
    args = ["train", recipe, "--steps", "3", "--run-dir", str(run_dir), "--no-progress", "--log-every", "1"]
    assert cli.main(args) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("cfd", "cfd_real_floor", "cfd_noise_baseline", "class_accuracy", "wall_seconds", "cpu_seconds"):
        assert key in summary, key
    with np.load(run_dir / "samples.npz") as data:
        assert data["images"].shape == (500, 8, 8, 1) and sorted(set(data["labels"])) == list(range(10))
    assert os.path.exists(run_dir / "samples.png") and os.listdir(run_dir / "checkpoints")
    assert summary["steps"] == 3
