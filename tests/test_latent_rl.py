"""PPO on VAE latents and REINFORCE with a GAN discriminator (generative/latent_policy.py, recipes/digits/latent_rl.py).

The maths against numpy (the latent policy's and the pixel policy's Gaussian
log-densities, the ORGAN and reconstruction reward mixtures), then both
recipes end to end on small base runs trained here: the files they write and
that their reward rose.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import artifex_rl.recipes.digits.common as digits_common
import artifex_rl.recipes.digits.gan as gan_recipes
import artifex_rl.recipes.digits.latent_rl as latent_rl
from artifex_rl.cli import main
from artifex_rl.distributions import GaussianPolicy
from artifex_rl.generative.image_rewards import DigitClassifierReward
from artifex_rl.generative.latent_policy import (
    BanditSource,
    DiscriminatorReward,
    GaussianGenerator,
    LatentActorCritic,
    ReconstructionReward,
    organ_reward,
)
from artifex_rl.metrics import train_digit_classifier
from artifex_rl.models import ConvDecoder, ConvEncoder, Discriminator, Generator
from artifex_rl.models.classifier import DigitClassifier
from artifex_rl.rewards import CompositeReward

SAMPLES = 100


def _numpy_gaussian_log_density(x, mean, std):
    """log prod_d N(x_d; mean_d, std_d^2), from the density itself."""
    density = np.exp(-0.5 * ((x - mean) / std) ** 2) / (np.sqrt(2 * np.pi) * std)
    return np.sum(np.log(density), axis=-1)


def test_the_latent_policy_log_prob_is_the_gaussian_density_of_the_encoder_output():
    rng = np.random.default_rng(0)
    model = LatentActorCritic(ConvEncoder(4, width=4, rngs=nnx.Rngs(0)), 64, hidden=8, rngs=nnx.Rngs(1))
    x = jnp.asarray(rng.uniform(-1, 1, (5, 8, 8, 1)), jnp.float32)
    (mean, log_std), value = model(x)
    assert mean.shape == log_std.shape == (5, 4) and value.shape == (5,)
    # A non-trivial std: the encoder starts at log_std = 0 everywhere; perturb its head.
    model.encoder.log_std.bias[...] = jnp.asarray(rng.normal(0, 0.5, 4), jnp.float32)
    (mean, log_std), _ = model(x)
    z = np.asarray(mean) + rng.normal(0, 2, mean.shape)
    ours = GaussianPolicy().log_prob((mean, log_std), jnp.asarray(z, jnp.float32))
    np.testing.assert_allclose(ours, _numpy_gaussian_log_density(z, np.asarray(mean), np.exp(np.asarray(log_std))),
                               rtol=1e-4)


def test_the_generator_policy_is_a_gaussian_around_the_flattened_images_with_a_fixed_sigma():
    rng = np.random.default_rng(1)
    model = GaussianGenerator(Generator(4, width=4, rngs=nnx.Rngs(0)), sigma=0.3)
    z = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    mean, log_std = model(z)
    np.testing.assert_allclose(mean, np.asarray(model.generator(z)).reshape(6, 64))
    np.testing.assert_allclose(np.exp(log_std), 0.3, rtol=1e-6)
    a = np.asarray(mean) + rng.normal(0, 0.3, mean.shape)
    ours = GaussianPolicy().log_prob((mean, log_std), jnp.asarray(a, jnp.float32))
    np.testing.assert_allclose(ours, _numpy_gaussian_log_density(a, np.asarray(mean), 0.3), rtol=1e-4)
    assert "log_sigma" not in nnx.state(model, nnx.Param).to_pure_dict(), "a fixed sigma is not trained"
    learned = GaussianGenerator(Generator(4, width=4, rngs=nnx.Rngs(0)), learn_sigma=True)
    assert "log_sigma" in nnx.state(learned, nnx.Param).to_pure_dict()
    with pytest.raises(ValueError, match="sigma must be > 0"):
        GaussianGenerator(model.generator, sigma=0.0)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_the_organ_and_reconstruction_rewards_match_numpy():
    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, (7, 8, 8, 1)).astype(np.float32)
    references = rng.uniform(-1, 1, (7, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 10, 7)
    disc, clf = Discriminator(width=4, rngs=nnx.Rngs(0)), DigitClassifier(width=4, rngs=nnx.Rngs(1))
    d_logits, c_logits = np.asarray(disc(jnp.asarray(images))), np.asarray(clf(jnp.asarray(images)))
    for lam in (0.0, 0.3, 1.0):
        reward = organ_reward(DiscriminatorReward(disc), DigitClassifierReward(clf, target=3), lam)(images)
        want = lam / (1 + np.exp(-d_logits)) + (1 - lam) * _softmax(c_logits)[:, 3]
        np.testing.assert_allclose(reward, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"lam \(ORGAN's lambda\) must be in \[0, 1\], got 1.5"):
        organ_reward(DiscriminatorReward(disc), DigitClassifierReward(clf, target=3), 1.5)
    composite = CompositeReward([DigitClassifierReward(clf), ReconstructionReward()], [1.0, 2.0])
    got = composite(images, jnp.asarray(labels), references=references)
    want = _softmax(c_logits)[np.arange(7), labels] - 2.0 * np.mean((images - references) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs references="):
        ReconstructionReward()(images)


def test_the_source_stores_the_log_probs_the_policy_gives_its_actions():
    """The first PPO ratio is exactly 1 only if the stored log-probs are the policy's own."""
    decoder = ConvDecoder(4, width=4, output="mean", rngs=nnx.Rngs(2))
    model = LatentActorCritic(ConvEncoder(4, width=4, rngs=nnx.Rngs(0)), 64, hidden=8, rngs=nnx.Rngs(1))
    clf = DigitClassifier(width=4, rngs=nnx.Rngs(3))
    reward_fn = CompositeReward([DigitClassifierReward(clf), ReconstructionReward()])
    images = np.random.default_rng(3).uniform(-1, 1, (30, 8, 8, 1)).astype(np.float32)
    labels = np.arange(30) % 10
    graphdef, state = nnx.split(model)
    snapshot = type("Snapshot", (), {"graphdef": graphdef, "params": state, "model_state": nnx.State({})})
    source = BanditSource(lambda: snapshot, latent_rl.vae_batch_fn(decoder, reward_fn, images, labels, 8), seed=0)
    batch = next(iter(source))
    output, value = model(batch["observations"])
    np.testing.assert_array_equal(batch["log_probs"], GaussianPolicy().log_prob(output, batch["actions"]))
    np.testing.assert_array_equal(batch["values"], value)
    decoded = decoder(batch["actions"])
    idx = [int(np.flatnonzero((images == np.asarray(o)).all(axis=(1, 2, 3)))[0]) for o in batch["observations"]]
    np.testing.assert_allclose(batch["rewards"], reward_fn(decoded, jnp.asarray(labels[idx]),
                                                           references=batch["observations"]), rtol=1e-5)
    assert source.state_dict() == {"batches": 1}


# ---------------------------------------------------------------------------------------------------
# The recipes, on small base runs


def _quick_classifier(seed=0, width=16, *, cache_dir=None, steps=60):
    return train_digit_classifier(seed, 8, cache_dir=cache_dir, steps=60)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Narrow VAE (200 steps) and GAN (150 steps) base runs, 60-step classifiers, 100 evaluation samples."""
    patch = pytest.MonkeyPatch()
    for module in (digits_common, latent_rl):
        patch.setattr(module, "NUM_SAMPLES", SAMPLES)
        patch.setattr(module, "train_digit_classifier", _quick_classifier)
    patch.setattr(gan_recipes, "NUM_SAMPLES", SAMPLES)
    patch.setattr(gan_recipes, "VAE_WIDTH", 8)
    patch.setattr(gan_recipes, "GAN_WIDTH", 8)
    patch.setattr(latent_rl, "VAE_SETTINGS", latent_rl.VAEPPOSettings(batch_size=64, learning_rate=3e-4,
                                                                      update_epochs=2, num_minibatches=1))
    patch.setattr(latent_rl, "GAN_SETTINGS", latent_rl.GANReinforceSettings(batch_size=64, learning_rate=1e-3,
                                                                           sigma=0.1, lam=0.2))
    root = tmp_path_factory.mktemp("latent_rl")
    runs = {}
    for recipe, steps, run in (("digits-vae", 200, gan_recipes.run_vae), ("digits-gan", 150, gan_recipes.run_gan)):
        runs[recipe] = str(root / recipe)
        run(type("Args", (), dict(recipe=recipe, seed=0, run_dir=runs[recipe], steps=steps, log_every=None,
                                  wandb_mode="disabled", no_progress=True))())
    yield root, runs
    patch.undo()


def _run(root, recipe, base, *extra):
    run_dir = str(root / recipe)
    assert main(["train", recipe, "--base-run", base, "--run-dir", run_dir, "--no-progress", *extra]) == 0
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    for key in ("initial_mean_reward", "final_mean_reward", "initial_cfd", "final_cfd", "final_kl", "wall_seconds"):
        assert np.isfinite(summary[key]), key
    for name in ("samples_before", "samples_after"):
        saved = np.load(os.path.join(run_dir, f"{name}.npz"))
        assert saved["images"].shape == (SAMPLES, 8, 8, 1) and saved["labels"].shape == (SAMPLES,)
        assert os.path.exists(os.path.join(run_dir, f"{name}.png"))
    assert os.path.exists(os.path.join(run_dir, "before_after.png"))
    return run_dir, summary


def test_ppo_on_vae_latents_raises_the_reward_on_held_out_digits(bases):
    root, runs = bases
    run_dir, summary = _run(root, "digits-ppo-vae", runs["digits-vae"], "--steps", "30")
    labels = np.load(os.path.join(run_dir, "samples_after.npz"))["labels"]
    assert (labels >= 0).all(), "decoded held-out digits carry their labels"
    # Small models, 30 steps: a small rise (about +0.01), but one with the same evaluation noise before and after.
    assert summary["final_mean_reward"] > summary["initial_mean_reward"] + 0.003, summary
    assert summary["final_kl"] > 0.0


def test_reinforce_with_the_organ_reward_raises_the_reward_and_p_target(bases):
    root, runs = bases
    run_dir, summary = _run(root, "digits-reinforce-gan", runs["digits-gan"], "--steps", "40", "--target-digit", "3")
    assert summary["target_digit"] == 3 and summary["steps"] == 40
    assert summary["final_mean_reward"] > summary["initial_mean_reward"] + 0.005, summary
    assert summary["final_p_target"] > summary["initial_p_target"] + 0.02, summary
    assert (np.load(os.path.join(run_dir, "samples_after.npz"))["labels"] == -1).all()
    with open(os.path.join(run_dir, "config.json")) as f:
        assert "--target-digit 3" in json.load(f)["command"]


def test_a_base_run_of_the_wrong_recipe_is_refused(bases):
    root, runs = bases
    with pytest.raises(FileNotFoundError, match="holds a 'digits-vae' run, expected digits-gan"):
        main(["train", "digits-reinforce-gan", "--base-run", runs["digits-vae"], "--steps", "1",
              "--run-dir", str(root / "refused"), "--no-progress"])


def test_each_batch_draws_new_latents():
    """Each batch draws new digits and latents (fold_in of the batch counter)."""
    model = LatentActorCritic(ConvEncoder(4, width=4, rngs=nnx.Rngs(0)), 64, hidden=8, rngs=nnx.Rngs(1))
    decoder = ConvDecoder(4, width=4, output="mean", rngs=nnx.Rngs(2))
    reward_fn = CompositeReward([ReconstructionReward()])
    images = np.random.default_rng(4).uniform(-1, 1, (50, 8, 8, 1)).astype(np.float32)
    graphdef, state = nnx.split(model)
    snapshot = type("Snapshot", (), {"graphdef": graphdef, "params": state, "model_state": nnx.State({})})
    batches = iter(BanditSource(lambda: snapshot, latent_rl.vae_batch_fn(decoder, reward_fn, images,
                                                                          np.zeros(50, np.int32), 16), seed=0))
    first, second = next(batches), next(batches)
    assert not np.array_equal(jax.device_get(first["actions"]), jax.device_get(second["actions"]))
