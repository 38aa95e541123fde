"""Recipes ``digits-ppo-vae`` and ``digits-reinforce-gan``: RL on a VAE's latents and on a GAN's generator.

The seeds' last two integration examples, made real with the existing
:class:`~artifex_rl.PPOTrainer` and :class:`~artifex_rl.REINFORCETrainer` on
one-step episodes (see :mod:`artifex_rl.generative.latent_policy`). The base
model comes from ``--base-run DIR`` (a ``digits-vae``/``digits-gan`` run) or is
trained once into ``<run_dir>/base`` (not timed).

* ``digits-ppo-vae``: observation = a training digit ``x``, action = a latent
  ``z ~ pi(z | x) = N(mean(x), exp(log_std(x))^2)`` of the VAE's encoder (the
  policy), environment = the frozen decoder ``x_hat = dec(z)``, reward
  ``P_reward(label(x) | x_hat) - recon_weight * mean_pixels (x_hat - x)^2``; a
  value MLP on ``x`` is the critic. A reconstruction reward alone is maximised
  near the encoder's mean; the classifier term asks for reconstructions the
  classifier recognises as the input's digit, so the run reports, before and
  after, on the held-out digits (conditions never trained on) and on training
  digits: the reward, the evaluation classifier's agreement with the label and
  the reconstruction error, both for sampled latents and for the policy's mean.
* ``digits-reinforce-gan``: observation = noise ``z ~ N(0, I)``, action =
  ``a ~ N(G(z), sigma^2 I)`` (the generator as a Gaussian policy over images,
  fixed ``sigma``), reward ORGAN's ``lam sigmoid(D(a)) + (1 - lam) P_reward(target | a)``
  with the frozen discriminator ``D`` (``a`` clipped to ``[-1, 1]``).

Both write ``samples_before.npz``/``.png``, ``samples_after.npz``/``.png``,
``before_after.png``, ``summary.json`` and ``metrics.jsonl``/``metrics.png``.
The reward classifier (seed 1, width 12) is not the evaluation classifier
(seed 0, width 16), as in :mod:`artifex_rl.recipes.digits.rl`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from argparse import Namespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl.data import load_digits_split
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
from artifex_rl.metrics import cfd_floors, evaluate_samples, train_digit_classifier
from artifex_rl.metrics.classifier import predict_logits
from artifex_rl.plotting import save_sample_grid
from artifex_rl.recipes.common import standard_callbacks, write_summary
from artifex_rl.recipes.digits.common import (
    NUM_SAMPLES,
    classifier_cache_dir,
    evaluation_classifier,
    write_samples,
)
from artifex_rl.recipes.digits.gan import load_run, run_gan, run_vae
from artifex_rl.recipes.digits.rl import REWARD_CLASSIFIER, _class_cfd
from artifex_rl.rewards import CompositeReward
from artifex_rl.rl.configs import PPOConfig, REINFORCEConfig
from artifex_rl.rl.losses.kl import gaussian_kl
from artifex_rl.rl.ppo import PPOTrainer
from artifex_rl.rl.reinforce import REINFORCETrainer

HEAD = GaussianPolicy()


@dataclasses.dataclass(frozen=True)
class VAEPPOSettings:
    """``digits-ppo-vae``: images per iteration, PPO's update schedule, the reward's reconstruction weight."""

    steps: int = 300
    batch_size: int = 256
    learning_rate: float = 1e-4
    recon_weight: float = 1.0
    # 2 x 2 updates: they are unrolled (a conv gradient in a rolled scan is ~16x slower on XLA:CPU),
    # and 4 x 4 unrolled updates took 50 s to compile.
    update_epochs: int = 2
    num_minibatches: int = 2
    clip_param: float = 0.2
    max_grad_norm: float = 0.5
    log_every: int = 10


@dataclasses.dataclass(frozen=True)
class GANReinforceSettings:
    """``digits-reinforce-gan``: samples per step, the policy's sigma, ORGAN's lambda."""

    steps: int = 300
    batch_size: int = 128
    learning_rate: float = 5e-4
    sigma: float = 0.15
    lam: float = 0.5
    max_grad_norm: float = 1.0
    log_every: int = 10


VAE_SETTINGS = VAEPPOSettings()
GAN_SETTINGS = GANReinforceSettings()


def _base(args: Namespace, recipe: str):
    """The base trainer: ``--base-run``, else trained once into ``<run_dir>/base`` (not timed)."""
    base_dir = getattr(args, "base_run", None)
    if base_dir is not None:
        return load_run(base_dir, recipe)
    base_dir = os.path.join(args.run_dir, "base")
    try:
        return load_run(base_dir, recipe)
    except FileNotFoundError:
        base_args = Namespace(recipe=recipe, seed=args.seed, run_dir=base_dir, steps=None, log_every=None,
                              wandb_mode="disabled", no_progress=getattr(args, "no_progress", False))
        (run_vae if recipe == "digits-vae" else run_gan)(base_args)
    return load_run(base_dir, recipe)


def _classifiers(run_dir: str):
    reward_clf, reward_info = train_digit_classifier(**REWARD_CLASSIFIER, cache_dir=classifier_cache_dir(run_dir))
    classifier, eval_info = evaluation_classifier(run_dir)
    infos = {name: {k: info[k] for k in ("seed", "width", "heldout_accuracy")}
             for name, info in (("reward_classifier", reward_info), ("eval_classifier", eval_info))}
    return reward_clf, classifier, infos


def _fit(trainer, source, args: Namespace, steps: int, run_config: dict[str, Any]) -> float:
    callbacks = standard_callbacks(args, run_config=run_config, checkpoint_every=max(steps // 2, 1))
    start = time.perf_counter()
    trainer.fit(source, max_steps=steps, max_epochs=None, callbacks=callbacks, ckpt_path="last")
    jax.block_until_ready(trainer.train_state)
    return time.perf_counter() - start


def _before_after_grid(run_dir: str, rows: list[np.ndarray], title: str) -> None:
    save_sample_grid(np.concatenate(rows), os.path.join(run_dir, "before_after.png"), nrow=sum(len(r) for r in rows) // 10,
                     title=title)


def _with_prefix(prefix: str, scores: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in scores.items()}


# ---------------------------------------------------------------------------------------------------
# PPO on VAE latents


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _decode_latents(policy_graphdef, decoder_graphdef, reward_fn, policy_state, decoder_state, x, y, key):
    """Per image: sampled and mean latents decoded, their rewards and the reward classifier's P(label)."""
    (mean, log_std), _ = nnx.merge(policy_graphdef, policy_state)(x)
    decoder = nnx.merge(decoder_graphdef, decoder_state)
    task = reward_fn.reward_fns[0]
    out = {}
    for name, z in (("sample", HEAD.sample((mean, log_std), key)), ("mode", mean)):
        images = decoder(z)
        out[name] = {"images": images, "reward": reward_fn(images, y, references=x), "p_label": task(images, y),
                     "mse": jnp.mean(jnp.square(images - x), axis=(1, 2, 3))}
    return out, mean, log_std


def _vae_scores(model, decoder, reward_fn, classifier, x, y, seed) -> tuple[np.ndarray, dict[str, float]]:
    """Scores of the policy on digits ``x`` with labels ``y``; returns the decoded sampled latents too."""
    graphdef, state = nnx.split(model)
    dec_graphdef, dec_state = nnx.split(decoder)
    out, _, _ = jax.device_get(_decode_latents(graphdef, dec_graphdef, reward_fn, state, dec_state,
                                               jnp.asarray(x), jnp.asarray(y), jax.random.key(seed)))
    scores: dict[str, float] = {"mean_reward": float(out["sample"]["reward"].mean())}
    for name, part in out.items():
        predicted = predict_logits(classifier, part["images"]).argmax(axis=-1)
        prefix = "" if name == "sample" else "mode_"
        scores.update({f"{prefix}agreement": float(np.mean(predicted == y)),
                       f"{prefix}reward_p_label": float(part["p_label"].mean()),
                       f"{prefix}recon_mse": float(part["mse"].mean())})
    scores["mode_mean_reward"] = float(out["mode"]["reward"].mean())
    return np.asarray(out["sample"]["images"]), scores


@functools.partial(jax.jit, static_argnums=0)
def _latent_kl(graphdef, state, reference_state, x):
    """Mean over images of KL(pi(z | x) || pi_ref(z | x)), summed over the latent dimensions (closed form)."""
    (mean, log_std), _ = nnx.merge(graphdef, state)(x)
    (ref_mean, ref_log_std), _ = nnx.merge(graphdef, reference_state)(x)
    return jnp.mean(gaussian_kl(mean, log_std, ref_mean, ref_log_std))


def vae_batch_fn(decoder: nnx.Module, reward_fn: CompositeReward, images: np.ndarray, labels: np.ndarray,
                 batch_size: int):
    """``(model, key) -> batch``: ``batch_size`` random training digits, a latent each from the policy, decoded
    by the frozen ``decoder`` and rewarded by ``reward_fn(decoded, labels, references=digits)``."""
    dec_graphdef, dec_state = nnx.split(decoder)
    images, labels = jnp.asarray(images), jnp.asarray(labels)

    def batch_fn(model, key):
        pick_key, act_key = jax.random.split(key)
        idx = jax.random.randint(pick_key, (batch_size,), 0, images.shape[0])
        x, y = images[idx], labels[idx]
        output, value = model(x)
        z = HEAD.sample(output, act_key)
        decoded = nnx.merge(dec_graphdef, dec_state)(z)
        return {"observations": x, "actions": z, "log_probs": HEAD.log_prob(output, z), "values": value,
                "rewards": reward_fn(decoded, y, references=x), "dones": jnp.ones((batch_size,), jnp.float32)}

    return batch_fn


def run_ppo_vae(args: Namespace, settings: VAEPPOSettings | None = None) -> dict[str, Any]:
    """``artifex-rl train digits-ppo-vae``: PPO on a VAE encoder's latents (see the module docstring)."""
    s = settings or VAE_SETTINGS
    steps = getattr(args, "steps", None) or s.steps
    base = _base(args, "digits-vae")
    reward_clf, classifier, infos = _classifiers(args.run_dir)
    reward_fn = CompositeReward([DigitClassifierReward(reward_clf), ReconstructionReward()], [1.0, s.recon_weight])
    split = load_digits_split()
    model = LatentActorCritic(base.model.encoder, int(np.prod(split.train_images.shape[1:])), rngs=nnx.Rngs(args.seed))
    decoder = base.model.decoder
    config = PPOConfig(clip_param=s.clip_param, update_epochs=s.update_epochs, num_minibatches=s.num_minibatches,
                       entropy_coeff=0.0, max_grad_norm=s.max_grad_norm, seed=args.seed, scan_unroll=True,
                       log_every_n_steps=getattr(args, "log_every", None) or min(s.log_every, steps))
    trainer = PPOTrainer(model, optax.adam(s.learning_rate), config, policy="gaussian")
    # A copy: the trainer donates its state to each compiled step.
    reference_state = jax.tree.map(jnp.copy, nnx.split(trainer.model)[1])

    sets = {"heldout": (split.heldout_images[:NUM_SAMPLES], split.heldout_labels[:NUM_SAMPLES]),
            "train": (split.train_images[:NUM_SAMPLES], split.train_labels[:NUM_SAMPLES])}

    def evaluate(phase: str) -> tuple[np.ndarray, dict[str, Any]]:
        results: dict[str, Any] = {}
        for name, (x, y) in sets.items():
            decoded, scores = _vae_scores(trainer.model, decoder, reward_fn, classifier, x, y, args.seed + 1000)
            if name == "heldout":
                images = decoded
                results[f"{phase}_cfd"] = evaluate_samples(classifier, decoded, y)["cfd"]
                results[f"{phase}_mean_reward"] = scores["mean_reward"]
            results.update(_with_prefix(f"{phase}_{name}", scores))
        return images, results

    before_images, before = evaluate("initial")
    heldout_labels = sets["heldout"][1]
    write_samples(args.run_dir, before_images, heldout_labels, name="samples_before", title="before PPO (held-out digits)")
    source = BanditSource(trainer, vae_batch_fn(decoder, reward_fn, split.train_images, split.train_labels,
                                                s.batch_size), seed=args.seed)
    run_config = {"recipe": args.recipe, "base_run": getattr(args, "base_run", None) or os.path.join(args.run_dir, "base"),
                  **dataclasses.asdict(s), "steps": steps, **trainer.config.to_dict()}
    train_seconds = _fit(trainer, source, args, steps, run_config)

    after_images, after = evaluate("final")
    write_samples(args.run_dir, after_images, heldout_labels, name="samples_after", title="after PPO (held-out digits)")
    picked = slice(0, 30)
    _before_after_grid(args.run_dir, [sets["heldout"][0][picked], before_images[picked], after_images[picked]],
                       "held-out digits (rows 1-3) / decoded before (4-6) / after PPO (7-9)")
    graphdef, state = nnx.split(trainer.model)
    summary: dict[str, Any] = {
        "recipe": args.recipe, "steps": trainer.global_step, "reward_evaluations": trainer.global_step * s.batch_size,
        **before, **after, **cfd_floors(classifier),
        "final_kl": float(_latent_kl(graphdef, state, reference_state, jnp.asarray(sets["heldout"][0]))),
        "wall_seconds": train_seconds, **infos,
        "load_average_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(),
    }
    write_summary(args.run_dir, summary)
    return summary


# ---------------------------------------------------------------------------------------------------
# REINFORCE with a GAN discriminator as reward


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _generate(graphdef, reward_fn, image_shape, state, z, key):
    """Clean images ``G(z)``, the policy's noisy samples, and the two parts of the reward of each."""
    output = nnx.merge(graphdef, state)(z)
    out = {}
    for name, flat in (("clean", output[0]), ("sample", HEAD.sample(output, key))):
        images = jnp.clip(flat.reshape(flat.shape[0], *image_shape), -1.0, 1.0)
        out[name] = {"images": images, "reward": reward_fn(images),
                     "d_prob": reward_fn.reward_fns[0](images), "p_target": reward_fn.reward_fns[1](images)}
    return out


@functools.partial(jax.jit, static_argnums=0)
def _pixel_kl(graphdef, state, reference_state, z):
    """KL(pi(. | z) || pi_ref(. | z)) per pixel (the chain recipes' convention), mean over ``z``."""
    mean, log_std = nnx.merge(graphdef, state)(z)
    ref_mean, ref_log_std = nnx.merge(graphdef, reference_state)(z)
    return jnp.mean(gaussian_kl(mean, log_std, ref_mean, ref_log_std)) / mean.shape[-1]


def gan_batch_fn(reward_fn, latent_dim: int, image_shape: tuple[int, ...], batch_size: int):
    """``(model, key) -> batch``: noise ``z``, an image ``a ~ N(G(z), sigma^2)`` each, rewarded on ``clip(a)``."""

    def batch_fn(model, key):
        z_key, act_key = jax.random.split(key)
        z = jax.random.normal(z_key, (batch_size, latent_dim))
        output = model(z)
        actions = HEAD.sample(output, act_key)
        images = jnp.clip(actions.reshape(batch_size, *image_shape), -1.0, 1.0)
        return {"observations": z, "actions": actions, "rewards": reward_fn(images),
                "dones": jnp.ones((batch_size,), jnp.float32)}

    return batch_fn


def run_reinforce_gan(args: Namespace, settings: GANReinforceSettings | None = None) -> dict[str, Any]:
    """``artifex-rl train digits-reinforce-gan``: REINFORCE on a GAN generator, ORGAN reward (module docstring)."""
    s = settings or GAN_SETTINGS
    steps = getattr(args, "steps", None) or s.steps
    target = int(getattr(args, "target_digit", None) if getattr(args, "target_digit", None) is not None else 3)
    if not 0 <= target <= 9:
        raise ValueError(f"--target-digit must be in 0..9, got {target}")
    base = _base(args, "digits-gan")
    reward_clf, classifier, infos = _classifiers(args.run_dir)
    models = base.models
    reward_fn = organ_reward(DiscriminatorReward(models["discriminator"]), DigitClassifierReward(reward_clf, target),
                             s.lam)
    generator = models["generator"]
    image_shape = tuple(load_digits_split().train_images.shape[1:])
    model = GaussianGenerator(generator, s.sigma)
    config = REINFORCEConfig(entropy_coeff=0.0, max_grad_norm=s.max_grad_norm, seed=args.seed,
                             log_every_n_steps=getattr(args, "log_every", None) or min(s.log_every, steps))
    trainer = REINFORCETrainer(model, optax.adam(s.learning_rate), config, policy="gaussian")
    reference_state = jax.tree.map(jnp.copy, nnx.split(trainer.model)[1])  # the trainer donates its state
    z_eval = jax.random.normal(jax.random.key(args.seed + 1000), (NUM_SAMPLES, generator.latent_dim))

    def evaluate(phase: str) -> tuple[np.ndarray, dict[str, Any]]:
        graphdef, state = nnx.split(trainer.model)
        out = jax.device_get(_generate(graphdef, reward_fn, image_shape, state, z_eval,
                                       jax.random.key(args.seed + 2000)))
        clean = np.asarray(out["clean"]["images"])
        predicted = predict_logits(classifier, clean).argmax(axis=-1)
        scores = {"mean_reward": float(out["sample"]["reward"].mean()),
                  "mean_reward_clean": float(out["clean"]["reward"].mean()),
                  **{f"{k}{'' if name == 'sample' else '_clean'}": float(out[name][k].mean())
                     for name in ("sample", "clean") for k in ("d_prob", "p_target")},
                  "class_accuracy": float(np.mean(predicted == target)),
                  "class_histogram": (np.bincount(predicted, minlength=10) / len(predicted)).tolist(),
                  "cfd": evaluate_samples(classifier, clean)["cfd"], **_class_cfd(classifier, clean, target)}
        return clean, _with_prefix(phase, scores)

    before_images, before = evaluate("initial")
    write_samples(args.run_dir, before_images, None, name="samples_before", title="before REINFORCE")
    source = BanditSource(trainer, gan_batch_fn(reward_fn, generator.latent_dim, image_shape, s.batch_size),
                          seed=args.seed)
    run_config = {"recipe": args.recipe, "target_digit": target,
                  "base_run": getattr(args, "base_run", None) or os.path.join(args.run_dir, "base"),
                  **dataclasses.asdict(s), "steps": steps, **trainer.config.to_dict()}
    train_seconds = _fit(trainer, source, args, steps, run_config)

    after_images, after = evaluate("final")
    write_samples(args.run_dir, after_images, None, name="samples_after", title="after REINFORCE")
    _before_after_grid(args.run_dir, [before_images[:50], after_images[:50]],
                       f"G(z) before (top 5 rows) / after (bottom 5) REINFORCE, target {target}")
    graphdef, state = nnx.split(trainer.model)
    summary: dict[str, Any] = {
        "recipe": args.recipe, "target_digit": target, "lam": s.lam, "sigma": s.sigma, "steps": trainer.global_step,
        "reward_evaluations": trainer.global_step * s.batch_size, **before, **after, **cfd_floors(classifier),
        "final_kl": float(_pixel_kl(graphdef, state, reference_state, z_eval)),
        "wall_seconds": train_seconds, **infos,
        "load_average_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(),
    }
    write_summary(args.run_dir, summary)
    return summary
