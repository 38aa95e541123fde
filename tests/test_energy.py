"""EnergyTrainer: the Langevin step and the losses against numpy, the replay buffer, resume, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl.generative.energy import (
    EnergyConfig,
    EnergyTrainer,
    contrastive_divergence_loss,
    langevin_chain,
    langevin_step,
)
from tests import _resume_script as script
from tests.test_checkpointing import _run_python


class QuadraticEnergy(nnx.Module):
    """``E(x) = sum_pixels w x^2``: ``grad_x E = 2 w x`` by hand."""

    def __init__(self, seed: int = 0):
        self.w = nnx.Param(jnp.asarray(np.random.default_rng(seed).uniform(0.5, 2.0, (8, 8, 1)), jnp.float32))

    def __call__(self, x):
        return jnp.sum(self.w[...] * x**2, axis=(1, 2, 3))


@pytest.mark.parametrize("grad_clip", [None, 0.5])
def test_langevin_step_matches_numpy(grad_clip):
    rng = np.random.default_rng(0)
    energy = QuadraticEnergy()
    w = np.asarray(energy.w[...])
    x = rng.uniform(-1, 1, (5, 8, 8, 1)).astype(np.float32)
    noise = rng.normal(size=x.shape).astype(np.float32)
    got = langevin_step(energy, jnp.asarray(x), jnp.asarray(noise), 0.3, 0.05, grad_clip)
    grad = 2 * w * x
    if grad_clip is not None:
        grad = np.clip(grad, -grad_clip, grad_clip)
    want = np.clip(x - 0.15 * grad + 0.05 * noise, -1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a noiseless chain on a quadratic bowl moves towards its minimum at 0
    end = langevin_chain(energy, jnp.asarray(x), jax.random.key(0), 10, 0.1, 0.0)
    assert np.abs(end).mean() < 0.5 * np.abs(x).mean()


def test_loss_with_both_regularisers_matches_numpy():
    rng = np.random.default_rng(1)
    energy = QuadraticEnergy(1)
    w = np.asarray(energy.w[...], np.float64)
    pos = rng.uniform(-1, 1, (6, 8, 8, 1)).astype(np.float32)
    neg = rng.uniform(-1, 1, (6, 8, 8, 1)).astype(np.float32)
    config = EnergyConfig(alpha=0.3, grad_norm_weight=0.2, buffer_size=8)
    trainer = EnergyTrainer(energy, optax.sgd(0.0), config)
    loss, metrics = trainer.compute_loss(energy, {"images": jnp.asarray(pos), "negatives": jnp.asarray(neg)},
                                         jax.random.key(0))
    e_pos = np.sum(w * pos**2, axis=(1, 2, 3))
    e_neg = np.sum(w * neg**2, axis=(1, 2, 3))
    gnorm2 = np.mean(np.sum(((2 * w * pos) ** 2).reshape(6, -1), axis=1))
    want = e_pos.mean() - e_neg.mean() + 0.3 * np.mean(e_pos**2 + e_neg**2) + 0.2 * gnorm2
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["energy_grad_norm2"]), gnorm2, rtol=1e-5)
    cd_only, _ = contrastive_divergence_loss(jnp.asarray(e_pos), jnp.asarray(e_neg), 0.0)
    np.testing.assert_allclose(float(cd_only), e_pos.mean() - e_neg.mean(), rtol=1e-5)


def test_each_step_writes_its_chains_back_to_the_buffer():
    config = EnergyConfig(langevin_steps=2, step_size=0.1, noise_std=0.0, buffer_size=256, buffer_prob=1.0)
    trainer = EnergyTrainer(QuadraticEnergy(), optax.adam(1e-3), config)
    before = np.asarray(trainer.train_state["extra"]["buffer"])
    x = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32)
    trainer.train_step({"images": x})
    after = np.asarray(trainer.train_state["extra"]["buffer"])
    changed = np.any((after != before).reshape(256, -1), axis=1)
    assert 0 < changed.sum() <= 16  # the drawn slots (with repeats) and nothing else
    # with buffer_prob=1 the chains started from those slots and moved towards the bowl's minimum at 0
    assert np.abs(after[changed]).mean() < np.abs(before[changed]).mean()


def test_replay_buffer_survives_resume_in_a_new_process(tmp_path):
    n = 12
    straight = script.run_ebm(str(tmp_path / "ckpt_a"), str(tmp_path / "run_a"), n, resume=False)
    script.run_ebm(str(tmp_path / "ckpt_b"), str(tmp_path / "run_b"), n // 2, resume=False)
    out = tmp_path / "resumed.npz"
    _run_python("run-ebm", "--ckpt-dir", str(tmp_path / "ckpt_b"), "--run-dir", str(tmp_path / "run_b"),
                "--max-steps", str(n), "--resume", "--out", str(out))
    resumed = script.load_outcome(str(out))
    assert "extra/buffer" in straight["state"]
    assert straight["state"].keys() == resumed["state"].keys()
    for k in straight["state"]:
        np.testing.assert_array_equal(straight["state"][k], resumed["state"][k], err_msg=k)
    assert resumed["rows"] == straight["rows"]


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="buffer_prob"):
        EnergyConfig(buffer_prob=1.5)
    with pytest.raises(ValueError, match="langevin_steps"):
        EnergyConfig(langevin_steps=0)
    with pytest.raises(ValueError, match="image_shape"):
        EnergyConfig(image_shape=(8, 8))
    trainer = EnergyTrainer(QuadraticEnergy(), optax.adam(1e-3), EnergyConfig(buffer_size=8))
    with pytest.raises(ValueError, match=r"images.*\(4, 7, 7, 1\)"):
        trainer.train_step({"images": np.zeros((4, 7, 7, 1), np.float32)})
    with pytest.raises(ValueError, match="images"):
        trainer.train_step({"images": np.zeros((4, 8, 8, 1), np.int32)})
