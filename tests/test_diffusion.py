"""DiffusionTrainer: schedules, targets and loss vs numpy, EMA, DDPM/DDIM samplers, input errors, resume."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl.generative import samplers
from artifex_rl.generative.diffusion import DiffusionConfig, DiffusionTrainer, diffusion_target
from artifex_rl.generative.schedules import make_schedule, sampling_timesteps
from tests._denoisers import TinyDenoiser, digit_batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_trainer(**config) -> DiffusionTrainer:
    config = {"num_timesteps": 100, "log_every_n_steps": 1, **config}
    return DiffusionTrainer(TinyDenoiser(rngs=nnx.Rngs(0)), optax.adam(1e-2), DiffusionConfig(**config))


# ---------------------------------------------------------------- schedules
def test_linear_schedule_alpha_bar_matches_a_numpy_loop():
    T = 200
    sched = make_schedule("linear", T)
    alpha_bar, expected = 1.0, []
    for k in range(T):
        beta = (1e-4 + (0.02 - 1e-4) * k / (T - 1)) * 1000 / T
        alpha_bar *= 1.0 - beta
        expected.append(alpha_bar)
    np.testing.assert_allclose(sched.alpha_bars, expected, rtol=1e-5)


def test_cosine_schedule_alpha_bar_matches_the_formula():
    T = 1000
    sched = make_schedule("cosine", T)
    f = lambda s: math.cos((s / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = np.array([f(k + 1) / f(0) for k in range(T)])
    unclipped = np.array([1 - f(k + 1) / f(k) < 0.999 for k in range(T)])
    np.testing.assert_allclose(sched.alpha_bars[unclipped], expected[unclipped], rtol=1e-4, atol=1e-7)
    assert np.all(np.diff(sched.alpha_bars) < 0) and sched.alpha_bars[-1] < 1e-3


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"schedule": "quadratic"}, "schedule"),
        ({"num_timesteps": 1}, "num_timesteps"),
        ({"num_timesteps": 10, "beta_end": 0.5, "schedule": "linear"}, "beta_end"),
        ({"beta_start": 0.1, "beta_end": 0.02, "schedule": "linear"}, "beta_start"),
        ({"prediction": "x0"}, "prediction"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"cond_drop_prob": 1.5}, "cond_drop_prob"),
    ],
)
def test_impossible_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DiffusionConfig(**kwargs)


# ---------------------------------------------------------------- loss
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_loss_matches_numpy(prediction):
    trainer = make_trainer(prediction=prediction, cond_drop_prob=0.0, schedule="linear")
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, (6, 8, 8, 1)).astype(np.float32)
    batch = {"images": jnp.asarray(x0), "labels": jnp.arange(6, dtype=jnp.int32)}
    key = jax.random.key(7)
    w = rng.normal(size=(64,)).astype(np.float32)

    def model(x, t, labels):  # any fixed function of the inputs
        return jnp.tanh(x * w.reshape(1, 8, 8, 1)) + t[:, None, None, None] + 0.1 * labels[:, None, None, None]

    loss, _ = trainer.compute_loss(model, batch, key)
    # The same random draws, the maths in numpy.
    k_t, k_noise, _ = jax.random.split(key, 3)
    steps = np.asarray(jax.random.randint(k_t, (6,), 0, 100))
    eps = np.asarray(jax.random.normal(k_noise, x0.shape))
    ab = np.asarray(trainer.schedule.alpha_bars, np.float64)[steps].reshape(-1, 1, 1, 1)
    x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
    pred = np.tanh(x_t * w.reshape(1, 8, 8, 1)) + (steps / 100).reshape(-1, 1, 1, 1) + 0.1 * np.arange(6).reshape(-1, 1, 1, 1)
    target = eps if prediction == "epsilon" else np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0
    np.testing.assert_allclose(float(loss.total / loss.count), np.mean((pred - target) ** 2), rtol=1e-4)


def test_v_target_and_predictions_invert_each_other():
    rng = np.random.default_rng(2)
    x0, eps = rng.normal(size=(2, 5, 8, 8, 1)).astype(np.float32)
    ab = rng.uniform(0.01, 0.99, (5,)).astype(np.float32)
    v = np.asarray(diffusion_target(jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(ab), "v"))
    abb = ab.reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(v, np.sqrt(abb) * eps - np.sqrt(1 - abb) * x0, rtol=1e-5, atol=1e-6)
    x_t = np.sqrt(abb) * x0 + np.sqrt(1 - abb) * eps
    for prediction, pred in (("v", v), ("epsilon", eps)):
        got_x0, got_eps = samplers.x0_and_eps(jnp.asarray(x_t), jnp.asarray(pred), jnp.asarray(ab), prediction)
        np.testing.assert_allclose(got_x0, x0, atol=2e-4)
        np.testing.assert_allclose(got_eps, eps, atol=2e-4)


def test_masked_rows_do_not_count():
    trainer = make_trainer(cond_drop_prob=0.0)
    model = lambda x, t, labels: x  # noqa: E731
    batch = digit_batches(1, 8)[0]
    mask = np.array([1, 1, 1, 0, 0, 1, 1, 0], np.float32)
    loss, _ = trainer.compute_loss(model, {**batch, "mask": mask}, jax.random.key(0))
    assert float(loss.count) == 5.0


# ---------------------------------------------------------------- EMA
def test_ema_update_inside_the_step_matches_numpy():
    trainer = make_trainer(ema_decay=0.8)
    leaves = lambda tree: [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]  # noqa: E731
    ema = leaves(trainer.train_state["params"]["model"])
    for batch in digit_batches(3):
        trainer.train_step(batch)
        ema = [0.8 * e + 0.2 * p for e, p in zip(ema, leaves(trainer.train_state["params"]["model"]), strict=True)]
    for got, want in zip(leaves(trainer.ema_params), ema, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert trainer.trace_count == 1


def test_ema_survives_an_exact_resume_in_a_new_process(tmp_path):
    from tests._resume_script import load_outcome

    def run(ckpt, out, steps, resume):
        cmd = [sys.executable, "-m", "tests._resume_script", "run-diffusion", "--ckpt-dir", str(ckpt),
               "--run-dir", str(tmp_path), "--max-steps", str(steps), "--out", str(out)]
        env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run(cmd + (["--resume"] if resume else []), cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return load_outcome(str(out))

    from tests._resume_script import run_diffusion

    straight = run_diffusion(str(tmp_path / "a"), str(tmp_path), 10, False)  # in this process
    run(tmp_path / "b", tmp_path / "b1.npz", 4, False)  # 4 steps: mid-epoch (2 batches of 16 per epoch)
    resumed = run(tmp_path / "b", tmp_path / "b2.npz", 10, True)
    assert resumed["global_step"] == straight["global_step"] == 10
    ema_keys = [k for k in straight["state"] if k.startswith("extra/ema")]
    assert ema_keys and set(straight["state"]) == set(resumed["state"])
    for key, value in straight["state"].items():
        np.testing.assert_array_equal(resumed["state"][key], value, err_msg=key)


# ---------------------------------------------------------------- samplers
def smooth_model(prediction_scale: float = 0.5):
    w = jnp.asarray(np.random.default_rng(3).normal(size=(1, 8, 8, 1)), jnp.float32)

    def model(x, t, labels):
        lab = 0.0 if labels is None else 0.05 * labels[:, None, None, None]
        return prediction_scale * jnp.tanh(0.5 * x * w) + 0.1 * t[:, None, None, None] + lab

    return model


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddim_eta0_is_deterministic_and_inverts_its_forward_ode(prediction):
    sched = make_schedule("linear", 1000)
    model = smooth_model(0.2)
    x0 = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
    labels = jnp.arange(4, dtype=jnp.int32)
    kw = dict(num_steps=50, prediction=prediction, guidance=1.5, null_label=10, unroll=1)  # long chains: fast compile
    latent = samplers.ddim_invert(model, sched, x0, labels, fixed_point_iters=4, **kw)
    back = [samplers.diffusion_sample(model, sched, latent, jax.random.key(k), labels, eta=0.0, clip_x0=False, **kw)
            for k in (0, 1)]
    np.testing.assert_array_equal(back[0], back[1])  # no noise enters with eta = 0
    assert float(jnp.max(jnp.abs(latent - x0))) > 0.5  # it did move to noise
    np.testing.assert_allclose(back[0], x0, atol=1e-3)
    first_order = samplers.ddim_invert(model, sched, x0, labels, **kw)
    assert float(jnp.max(jnp.abs(first_order - latent))) < 0.1  # the plain inversion is close


def test_ddpm_step_is_the_posterior_and_equals_ddim_with_eta_one():
    rng = np.random.default_rng(5)
    x, pred = rng.normal(size=(2, 3, 8, 8, 1)).astype(np.float32)
    sched = make_schedule("linear", 1000)
    k, k_prev = 500, 499
    ab, ab_prev = sched.alpha_bars[k].astype(np.float64), sched.alpha_bars[k_prev].astype(np.float64)
    beta = float(sched.betas[k])
    mean, std = samplers.ddpm_step_mean_std(x, pred, ab, ab_prev, prediction="epsilon", clip_x0=False)
    # Ho et al. (2020) eq. (11) for the mean and beta_tilde for the variance.
    mean_np = (x - beta / np.sqrt(1 - ab) * pred) / np.sqrt(1 - beta)
    np.testing.assert_allclose(mean, mean_np, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(float(std), np.sqrt((1 - ab_prev) / (1 - ab) * beta), rtol=2e-3)
    mean_ddim, std_ddim = samplers.ddim_step_mean_std(x, pred, ab, ab_prev, eta=1.0, prediction="epsilon")
    np.testing.assert_allclose(mean_ddim, mean, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(float(std_ddim), float(std), rtol=2e-3)


def test_chain_means_and_stds_reproduce_the_samples():
    sched = make_schedule("cosine", 100)
    noise = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    out = samplers.diffusion_sample(smooth_model(), sched, noise, jax.random.key(1), num_steps=10, eta=0.7,
                                    return_chain=True)
    for i in range(10):
        z = jax.random.normal(jax.random.fold_in(jax.random.key(1), i), noise.shape)
        np.testing.assert_allclose(out["latents"][i + 1], out["means"][i] + out["stds"][i] * z, atol=1e-6)
    assert np.all(np.asarray(out["stds"][:-1]) > 0)
    np.testing.assert_array_equal(out["timesteps"], sampling_timesteps(100, 10))


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_sampler_inside_jit_equals_the_standalone_one(method):
    trainer = make_trainer()
    trainer.train_step(digit_batches(1)[0])
    labels = jnp.array([0, 3, 9, 10], jnp.int32)
    opts = dict(num_steps=8, method=method, eta=0.5, guidance=2.0)
    standalone = trainer.sample(jax.random.key(3), labels, **opts)
    sampler = trainer.sampler(**opts)
    ema, ms = trainer.ema_params, trainer.train_state["model_state"]["model"]

    @jax.jit
    def outer(params, key):  # e.g. an RL step that samples and scores in one call
        images = sampler(params, ms, key, labels)
        return images, jnp.mean(images)

    inside, _ = outer(ema, jax.random.key(3))
    np.testing.assert_allclose(inside, standalone, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(standalone)))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "batch, match",
    [
        ({"images": np.zeros((4, 8, 8), np.float32), "labels": np.zeros(4, np.int32)}, r"batch\['images'\].*\(B, 8, 8, 1\)"),
        ({"images": np.zeros((4, 8, 8, 1), np.int32), "labels": np.zeros(4, np.int32)}, r"batch\['images'\].*dtype"),
        ({"images": np.zeros((4, 8, 8, 1), np.float32), "labels": np.array([0, 1, 10, 2], np.int32)}, r"batch\['labels'\].*\[0, 10\)"),
        ({"images": np.zeros((4, 8, 8, 1), np.float32), "labels": np.zeros(4, np.float32)}, r"batch\['labels'\].*integers"),
        ({"images": np.zeros((4, 8, 8, 1), np.float32)}, r"batch\['labels'\]"),
    ],
)
def test_bad_batches_name_the_field(batch, match):
    trainer = make_trainer()
    with pytest.raises(ValueError, match=match):
        trainer.train_step(batch)


def test_sample_labels_out_of_range_and_guidance_without_null_label():
    trainer = make_trainer()
    with pytest.raises(ValueError, match="labels must be in"):
        trainer.sample(jax.random.key(0), np.array([11]), num_steps=2)
    with pytest.raises(ValueError, match="null label"):
        samplers.guided(smooth_model(), jnp.zeros((1, 8, 8, 1)), jnp.zeros(1), jnp.zeros(1, jnp.int32), 2.0, None)
