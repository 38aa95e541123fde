"""Shapes, conditioning and input checks of the 8x8 reference models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from artifex_rl.models import (
    ConvDecoder,
    ConvEncoder,
    DenoiserMixer,
    DenoiserUNet,
    DigitClassifier,
    Discriminator,
    EnergyMLP,
    Generator,
)
from artifex_rl.models.embeddings import sinusoidal_embedding
from artifex_rl.models.mixer import patchify, unpatchify

B = 3


def _images(seed=0, b=B):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (b, 8, 8, 1)), jnp.float32)


def _out_shape(make, *args):
    """Output shape of ``make()(*args)`` without compiling anything: init and call are traced abstractly."""
    return jax.eval_shape(lambda *a: make()(*a), *args)


def _jit_run(make, fn, *args):
    """``fn(make(), *args)`` as one compiled program (init included): one compile instead of one per op."""
    return jax.jit(lambda *a: fn(make(), *a))(*args)


@pytest.mark.parametrize("family", [DenoiserUNet, DenoiserMixer])
def test_denoiser_shapes_and_conditioning(family):
    x, t = _images(), jnp.array([0.0, 0.5, 1.0])
    model = nnx.eval_shape(lambda: family(rngs=nnx.Rngs(0)))
    assert model.null_label == 10 and model.num_classes == 10
    assert sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))) < 500_000
    assert _out_shape(lambda: family(rngs=nnx.Rngs(0)), x, 0.3).shape == (
        B,
        8,
        8,
        1,
    )  # a scalar t is broadcast

    labels, other_labels, null_labels = jnp.array([1, 2, 3]), jnp.array([5, 6, 7]), jnp.full((B,), 10)

    def outputs(m, x, t):
        fresh = m(x, t, labels)
        # Once the output layer is non-zero, time and labels change the output.
        m.out.kernel[...] = jax.random.normal(jax.random.key(1), m.out.kernel.shape) * 0.1
        # Four variants in one batch of 4B: (t, labels), (t, other labels), (t + 0.1, labels), (t, null).
        batched = m(
            jnp.concatenate([x] * 4),
            jnp.concatenate([t, t, t + 0.1, t]),
            jnp.concatenate([labels, other_labels, labels, null_labels]),
        )
        return fresh, batched.reshape(4, B, 8, 8, 1), m(x, t)  # last: labels=None

    fresh, (base, relabelled, retimed, null), no_labels = _jit_run(
        lambda: family(rngs=nnx.Rngs(0)), outputs, x, t
    )
    np.testing.assert_array_equal(fresh, 0.0)  # a fresh model predicts 0 (zero-initialised output layer)
    assert fresh.shape == no_labels.shape == (B, 8, 8, 1)
    assert not np.allclose(base, relabelled)
    assert not np.allclose(base, retimed)
    # labels=None is the null label; and a sample's output does not depend on the rest of its batch.
    np.testing.assert_allclose(no_labels, null, atol=1e-5)


@pytest.mark.parametrize("family", [DenoiserUNet, DenoiserMixer])
def test_denoiser_unconditional_and_bad_input(family):
    x = _images()
    unconditional = lambda: family(num_classes=None, rngs=nnx.Rngs(0))  # noqa: E731
    assert _out_shape(unconditional, x, jnp.zeros(B)).shape == (B, 8, 8, 1)
    assert nnx.eval_shape(unconditional).null_label is None
    with pytest.raises(ValueError, match="labels were given to an unconditional model"):
        _out_shape(unconditional, x, jnp.zeros(B), jnp.zeros(B, jnp.int32))
    conditional = lambda: family(rngs=nnx.Rngs(0))  # noqa: E731
    with pytest.raises(ValueError, match=r"x must have shape \(B, 8, 8, 1\), got \(3, 8, 8\)"):
        _out_shape(conditional, x[..., 0], jnp.zeros(B))
    with pytest.raises(ValueError, match="x must be floating point"):
        _out_shape(conditional, x.astype(jnp.int32), jnp.zeros(B))
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(3,\)"):
        _out_shape(conditional, x, jnp.zeros(2))
    with pytest.raises(ValueError, match=r"labels must be integers of shape \(3,\)"):
        _out_shape(conditional, x, jnp.zeros(B), jnp.zeros(B))


def test_sinusoidal_embedding_matches_numpy():
    t = np.random.default_rng(0).uniform(0, 1000, 5).astype(np.float32)
    dim = 16
    freqs = 10_000.0 ** (-np.arange(8) / 8)
    want = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], axis=1)
    np.testing.assert_allclose(sinusoidal_embedding(jnp.asarray(t), dim), want, atol=2e-3)


def test_patchify_round_trip_and_layout():
    x = jnp.arange(2 * 64, dtype=jnp.float32).reshape(2, 8, 8, 1)
    tokens = patchify(x)
    assert tokens.shape == (2, 16, 4)
    np.testing.assert_array_equal(tokens[0, 1], [2, 3, 10, 11])  # second patch of the first row
    np.testing.assert_array_equal(unpatchify(tokens, 1), x)


def test_vae_encoder_decoder_shapes():
    z = jnp.asarray(np.random.default_rng(1).normal(size=(B, 8)), jnp.float32)

    def run(x, z):
        mean, log_std = ConvEncoder(8, rngs=nnx.Rngs(0))(x)
        return mean, log_std, ConvDecoder(8, output="mean", rngs=nnx.Rngs(1))(100 * z)

    mean, log_std, means = jax.jit(run)(_images(), z)
    assert mean.shape == log_std.shape == (B, 8)
    np.testing.assert_array_equal(log_std, 0.0)  # q(z|x) starts as wide as the prior
    assert means.shape == (B, 8, 8, 1) and float(jnp.abs(means).max()) <= 1.0
    assert _out_shape(lambda: ConvDecoder(8, rngs=nnx.Rngs(0)), z).shape == (B, 8, 8, 1)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 8\), got \(3, 4\)"):
        _out_shape(lambda: ConvDecoder(8, rngs=nnx.Rngs(0)), z[:, :4])
    with pytest.raises(ValueError, match="output must be 'logits' or 'mean'"):
        ConvDecoder(8, output="probs", rngs=nnx.Rngs(0))


def test_gan_shapes_range_and_input_gradient():
    def run(z):
        generator, disc = Generator(16, rngs=nnx.Rngs(0)), Discriminator(rngs=nnx.Rngs(1))
        images = generator(z)
        # The per-sample input gradient (what WGAN-GP penalises) is defined and finite.
        return images, disc(images), jax.grad(lambda x: disc(x).sum())(images)

    images, logits, grads = jax.jit(run)(
        jnp.asarray(np.random.default_rng(2).normal(size=(B, 16)) * 10, jnp.float32)
    )
    assert images.shape == (B, 8, 8, 1) and float(jnp.abs(images).max()) <= 1.0
    assert logits.shape == (B,)
    assert grads.shape == images.shape and bool(jnp.all(jnp.isfinite(grads)))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 16\)"):
        _out_shape(lambda: Generator(16, rngs=nnx.Rngs(0)), jnp.zeros((B, 8)))


def test_energy_shapes_and_input_gradient():
    def run(x):
        energy = EnergyMLP(hidden=(64, 64), rngs=nnx.Rngs(0))
        return energy(x), jax.grad(lambda x: energy(x).sum())(x)  # what Langevin dynamics follows

    energies, grad = jax.jit(run)(_images())
    assert energies.shape == (B,)
    assert grad.shape == (B, 8, 8, 1) and float(jnp.abs(grad).sum()) > 0
    with pytest.raises(ValueError, match="hidden must be a non-empty sequence"):
        EnergyMLP(hidden=(), rngs=nnx.Rngs(0))


def test_classifier_shapes():
    x = _images()
    classifier = nnx.eval_shape(lambda: DigitClassifier(rngs=nnx.Rngs(0)))
    assert classifier.num_features == 32
    assert jax.eval_shape(lambda x: DigitClassifier(rngs=nnx.Rngs(0)).features(x), x).shape == (B, 32)
    assert _out_shape(lambda: DigitClassifier(rngs=nnx.Rngs(0)), x).shape == (B, 10)
    small = jax.eval_shape(
        lambda x: DigitClassifier(width=8, num_features=12, rngs=nnx.Rngs(0)).features(x), x
    )
    assert small.shape == (B, 12)
    with pytest.raises(ValueError, match="width must be a positive int"):
        DigitClassifier(width=0, rngs=nnx.Rngs(0))
