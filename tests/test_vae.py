"""VAETrainer: the ELBO with free bits against numpy, KL annealing, bad input; recipe smoke runs."""

from __future__ import annotations

import functools
import json
import math
import os
from argparse import Namespace

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl.generative.vae import VAE, VAEConfig, VAETrainer, elbo_loss
from artifex_rl.models import ConvDecoder, ConvEncoder


def _numpy_elbo(x, out, mean, log_std, beta, likelihood, sigma, free_bits):
    b = x.shape[0]
    recon = 0.0
    for i in range(b):
        xi, oi = x[i].ravel().astype(np.float64), out[i].ravel().astype(np.float64)
        if likelihood == "bernoulli":
            t = (xi + 1) / 2
            p = 1 / (1 + np.exp(-oi))
            recon += -np.sum(t * np.log(p) + (1 - t) * np.log(1 - p))
        else:
            recon += -np.sum(-((xi - oi) ** 2) / (2 * sigma**2) - np.log(sigma) - 0.5 * np.log(2 * math.pi))
    recon /= b
    var = np.exp(2 * log_std)
    kl_bd = 0.5 * (mean**2 + var - 1 - np.log(var))
    kl_d = kl_bd.mean(axis=0)
    return recon + beta * np.sum(np.maximum(kl_d, free_bits)), recon, kl_d.sum()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("free_bits", [0.0, 0.4])
def test_elbo_with_free_bits_matches_numpy(likelihood, free_bits):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (6, 8, 8, 1)).astype(np.float32)
    out = rng.normal(size=x.shape).astype(np.float32)
    mean = (rng.normal(size=(6, 5)) * 0.5).astype(np.float32)
    log_std = (rng.normal(size=(6, 5)) * 0.3).astype(np.float32)
    loss, metrics = elbo_loss(jnp.asarray(x), jnp.asarray(out), jnp.asarray(mean), jnp.asarray(log_std), 0.7,
                              likelihood=likelihood, decoder_std=0.3, free_bits=free_bits)
    want, recon, kl = _numpy_elbo(x, out, mean, log_std, 0.7, likelihood, 0.3, free_bits)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["recon"]), recon, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["kl"]), kl, rtol=1e-5)
    if free_bits:  # some dimension is below the floor, so the floor changes the loss
        assert want > recon + 0.7 * kl + 1e-3


def _trainer(**kw):
    rngs = nnx.Rngs(0)
    model = VAE(ConvEncoder(4, width=4, rngs=rngs), ConvDecoder(4, width=4, rngs=rngs))
    return VAETrainer(model, optax.adam(1e-3), VAEConfig(**kw))


def test_kl_weight_warms_up_linearly_with_the_step_count():
    trainer = _trainer(kl_weight=0.5, kl_warmup_steps=4)
    x = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)
    betas = [float(trainer.train_step({"images": x})["beta"]) for _ in range(6)]
    np.testing.assert_allclose(betas, [0.0, 0.125, 0.25, 0.375, 0.5, 0.5])
    assert int(trainer.train_state["extra"]["step"]) == 6
    assert trainer.trace_count == 1


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="likelihood"):
        VAEConfig(likelihood="poisson")
    with pytest.raises(ValueError, match="kl_warmup_steps"):
        VAEConfig(kl_warmup_steps=-1)
    with pytest.raises(ValueError, match="free_bits"):
        VAEConfig(free_bits=-0.1)
    trainer = _trainer()
    with pytest.raises(ValueError, match="images"):
        trainer.train_step({"images": np.zeros((4, 8, 8, 1), np.uint8)})
    with pytest.raises(KeyError, match="images"):
        trainer.train_step({"x": np.zeros((4, 8, 8, 1), np.float32)})


@pytest.mark.parametrize("recipe", ["digits-vae", "digits-gan", "digits-ebm"])
def test_recipe_smoke_run_writes_the_run_directory(recipe, tmp_path_factory, monkeypatch):
    """Each recipe with --steps 4 (and a 20-step evaluation classifier) writes samples, summary, checkpoints."""
    import artifex_rl.recipes.digits.common as common
    from artifex_rl.recipes import load_recipe

    monkeypatch.setattr(common, "train_digit_classifier", functools.partial(common.train_digit_classifier, steps=20))
    root = tmp_path_factory.getbasetemp() / "digits_recipes"  # the classifier cache is shared
    run_dir = str(root / recipe)
    args = Namespace(recipe=recipe, seed=0, run_dir=run_dir, steps=4, log_every=2, wandb_mode="disabled",
                     no_progress=True)
    summary = load_recipe(recipe)(args)
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert json.load(f)["steps"] == summary["steps"] == 4
    for key in ("cfd", "cfd_real_floor", "cfd_noise_baseline", "wall_seconds"):
        assert np.isfinite(summary[key]), key
    with np.load(os.path.join(run_dir, "samples.npz")) as data:
        assert data["images"].shape == (500, 8, 8, 1) and (data["labels"] == -1).all()
        assert np.abs(data["images"]).max() <= 1.0
    assert os.path.exists(os.path.join(run_dir, "samples.png"))
    assert os.listdir(os.path.join(run_dir, "checkpoints"))
