"""GANTrainer: each loss and the gradient penalty against numpy, two optimizers in one step,
bit-exact resume in a new process, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl.generative.gan import (
    GANConfig,
    GANTrainer,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
)
from artifex_rl.models import Discriminator, Generator
from tests import _resume_script as script
from tests.test_checkpointing import _run_python


def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


NUMPY_LOSSES = {
    "non_saturating": (lambda r, f: np.mean(_softplus(-r)) + np.mean(_softplus(f)), lambda f: np.mean(_softplus(-f))),
    "hinge": (lambda r, f: np.mean(np.maximum(0, 1 - r)) + np.mean(np.maximum(0, 1 + f)), lambda f: -np.mean(f)),
    "least_squares": (lambda r, f: 0.5 * np.mean((r - 1) ** 2) + 0.5 * np.mean(f**2), lambda f: 0.5 * np.mean((f - 1) ** 2)),
    "wgan_gp": (lambda r, f: np.mean(f) - np.mean(r), lambda f: -np.mean(f)),
}


@pytest.mark.parametrize("loss_type", sorted(NUMPY_LOSSES))
def test_losses_match_numpy(loss_type):
    rng = np.random.default_rng(0)
    r, f = rng.normal(size=33) * 3, rng.normal(size=33) * 3
    d_np, g_np = NUMPY_LOSSES[loss_type]
    np.testing.assert_allclose(discriminator_loss(jnp.asarray(r), jnp.asarray(f), loss_type), d_np(r, f), rtol=1e-5)
    np.testing.assert_allclose(generator_loss(jnp.asarray(f), loss_type), g_np(f), rtol=1e-5)


def test_gradient_penalty_of_a_linear_and_a_quadratic_critic_matches_the_analytic_gradient():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(5, 4, 4, 1)), rng.normal(size=(5, 4, 4, 1))
    eps = rng.uniform(size=5)
    w = rng.normal(size=(16,)) * 0.4
    linear = lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(w)  # noqa: E731 - grad = w for every sample
    got = gradient_penalty(linear, jnp.asarray(real), jnp.asarray(fake), jnp.asarray(eps))
    np.testing.assert_allclose(got, (np.linalg.norm(w) - 1) ** 2, rtol=1e-5)
    # quadratic: D(x) = sum a x^2, grad = 2 a x_hat, differs per sample
    a = rng.uniform(0.1, 1.0, size=(4, 4, 1))
    quad = lambda x: jnp.sum(jnp.asarray(a) * x**2, axis=(1, 2, 3))  # noqa: E731
    x_hat = eps[:, None, None, None] * real + (1 - eps[:, None, None, None]) * fake
    norms = np.linalg.norm((2 * a * x_hat).reshape(5, -1), axis=1)
    got = gradient_penalty(quad, jnp.asarray(real), jnp.asarray(fake), jnp.asarray(eps))
    np.testing.assert_allclose(got, np.mean((norms - 1) ** 2), rtol=1e-5)


def _trainer(loss_type="hinge", n_critic=2, **kw):
    models = {"generator": Generator(8, width=4, rngs=nnx.Rngs(0)),
              "discriminator": Discriminator(width=4, rngs=nnx.Rngs(1))}
    optimizers = {"generator": optax.adam(1e-3), "discriminator": optax.sgd(1e-2)}
    return GANTrainer(models, optimizers, GANConfig(loss_type=loss_type, n_critic=n_critic, latent_dim=8, **kw))


def _images(n=8, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 8, 8, 1)).astype(np.float32)


def test_one_step_updates_the_discriminator_n_critic_times_then_the_generator():
    trainer = _trainer("wgan_gp", n_critic=3)
    before = jax.tree.map(np.asarray, trainer.train_state["params"])
    metrics = trainer.train_step({"images": _images()})
    assert trainer.train_state["opt_state"]["generator"][0].count == 1  # Adam's step count: one G update
    for name in ("generator", "discriminator"):
        changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), before[name],
                                               trainer.train_state["params"][name]))
        assert any(changed), name
    assert {"discriminator_loss", "generator_loss", "gradient_penalty", "d_real", "d_fake"} <= set(metrics)
    assert trainer.trace_count == 1
    trainer.train_step({"images": _images(seed=1)})
    assert trainer.trace_count == 1


def test_the_discriminator_phase_matches_a_hand_written_sgd_update():
    """With SGD, the discriminator's new parameters are p - lr * grad L_D at the step's z (n_critic=1)."""
    trainer = _trainer("least_squares", n_critic=1)
    x = _images()
    g_model, d_model = (nnx.clone(m) for m in (trainer.models["generator"], trainer.models["discriminator"]))
    # Recover the step's z by replaying the key the core hands the discriminator phase.
    from artifex_rl.core import rng as rngs

    step_key = rngs.stream_key(trainer.train_state["rng"], rngs.STEP, trainer.train_state["step"])
    key = rngs.sub(rngs.sub(step_key, rngs.UPDATE), 0)
    z = jax.random.normal(jax.random.split(key)[0], (8, 8))
    fake = g_model(z)

    def loss(d):
        return discriminator_loss(d(jnp.asarray(x)), d(fake), "least_squares")

    grads = nnx.grad(loss)(d_model)
    expected = jax.tree.map(lambda p, g: p - 1e-2 * g, nnx.to_pure_dict(nnx.state(d_model, nnx.Param)),
                            nnx.to_pure_dict(grads))
    trainer.train_step({"images": x})
    got = trainer.train_state["params"]["discriminator"]
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="loss_type"):
        GANConfig(loss_type="wasserstein")
    with pytest.raises(ValueError, match="n_critic"):
        GANConfig(n_critic=0)
    with pytest.raises(ValueError, match="latent_dim"):  # the generator takes 8
        GANTrainer(
            {"generator": Generator(8, width=4, rngs=nnx.Rngs(0)), "discriminator": Discriminator(width=4, rngs=nnx.Rngs(1))},
            {"generator": optax.adam(1e-3), "discriminator": optax.adam(1e-3)}, GANConfig(latent_dim=16))
    with pytest.raises(ValueError, match="generator"):
        GANTrainer({"model": Generator(8, width=4, rngs=nnx.Rngs(0))}, {"model": optax.adam(1e-3)})
    trainer = _trainer()
    with pytest.raises(ValueError, match="images"):
        trainer.train_step({"images": np.zeros((4, 8, 8, 1), np.int32)})
    with pytest.raises(ValueError, match="images"):
        trainer.train_step({"images": np.zeros((4, 8, 8), np.float32)})
    with pytest.raises(KeyError, match="images"):
        trainer.train_step({"x": _images()})


def test_two_optimizers_resume_bit_exactly_in_a_new_process(tmp_path):
    """12 steps straight == 6 steps + checkpoint + new process + resume + 6 steps, bit for bit
    (both models' parameters, Adam and RMSProp states, the loader's position mid-epoch)."""
    n = 12
    straight = script.run_gan(str(tmp_path / "ckpt_a"), str(tmp_path / "run_a"), n, resume=False)
    script.run_gan(str(tmp_path / "ckpt_b"), str(tmp_path / "run_b"), n // 2, resume=False)
    out = tmp_path / "resumed.npz"
    _run_python("run-gan", "--ckpt-dir", str(tmp_path / "ckpt_b"), "--run-dir", str(tmp_path / "run_b"),
                "--max-steps", str(n), "--resume", "--out", str(out))
    resumed = script.load_outcome(str(out))
    keys = set(straight["state"])
    assert any(k.startswith("opt_state/generator") for k in keys)
    assert any(k.startswith("opt_state/discriminator") for k in keys)
    assert straight["state"].keys() == resumed["state"].keys()
    for k in keys:
        np.testing.assert_array_equal(straight["state"][k], resumed["state"][k], err_msg=k)
    assert resumed["rows"] == straight["rows"] and resumed["global_step"] == n
    assert "gradient_penalty" in straight["rows"][-1]
