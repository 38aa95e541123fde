"""The generative trainers' rows of the bad-input table (tests/test_bad_inputs.py).

Each row: ``(id, thunk, exception type, regex the message must match)``; the
regex names the offending batch key (``batch['images']``, ``batch['labels']``,
``batch['mask']``) or config field. Models are the smallest that run: the MLP
denoiser of the diffusion/flow tests, width-4 conv nets, an 8-unit energy MLP.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl.generative.diffusion import DiffusionConfig, DiffusionTrainer
from artifex_rl.generative.energy import EnergyConfig, EnergyTrainer
from artifex_rl.generative.flow import FlowConfig, FlowTrainer
from artifex_rl.generative.gan import GANConfig, GANTrainer
from artifex_rl.generative.vae import VAE, VAEConfig, VAETrainer
from artifex_rl.models.energy import EnergyMLP
from artifex_rl.models.gan import Discriminator, Generator
from artifex_rl.models.vae import ConvDecoder, ConvEncoder
from tests._denoisers import TinyDenoiser

B = 4


def images(shape=(B, 8, 8, 1), dtype=np.float32):
    return np.random.default_rng(0).uniform(-1, 1, shape).astype(dtype)


def labels(bad=None, shape=(B,), dtype=np.int32):
    """Valid class labels; ``bad`` replaces the second one."""
    out = np.random.default_rng(0).integers(0, 10, shape).astype(dtype)
    if bad is not None:
        out.flat[1] = bad
    return out


def strings(shape=(B, 8, 8, 1)):
    return np.full(shape, "0.5")


def diffusion(conditional=True, **cfg):
    model = TinyDenoiser(10 if conditional else None, rngs=nnx.Rngs(0))
    return DiffusionTrainer(model, optax.sgd(0.01), DiffusionConfig(num_timesteps=100, **cfg))


def flow(**cfg):
    return FlowTrainer(TinyDenoiser(rngs=nnx.Rngs(0)), optax.sgd(0.01), FlowConfig(**cfg))


def vae(**cfg):
    rngs = nnx.Rngs(0)
    model = VAE(ConvEncoder(4, width=4, rngs=rngs), ConvDecoder(4, width=4, rngs=rngs))
    return VAETrainer(model, optax.sgd(0.01), VAEConfig(**cfg))


def gan(latent_dim=8, names=("generator", "discriminator"), optimizers=("generator", "discriminator"), **cfg):
    nets = [Generator(8, width=4, rngs=nnx.Rngs(0)), Discriminator(width=4, rngs=nnx.Rngs(1))]
    return GANTrainer(dict(zip(names, nets, strict=True)), {name: optax.sgd(0.01) for name in optimizers},
                      GANConfig(latent_dim=latent_dim, **cfg))


def ebm(**cfg):
    return EnergyTrainer(EnergyMLP(hidden=(8,), rngs=nnx.Rngs(0)), optax.sgd(0.01),
                         EnergyConfig(buffer_size=8, langevin_steps=1, **cfg))


def _denoise(trainer_fn, **batch):
    return lambda: trainer_fn().train_step({k: v for k, v in batch.items() if v is not None})


def _sample(trainer, labels_, **options):
    return trainer.sample(jax.random.key(0), labels_, **options)


IMG = r"batch\['images'\]"
LAB = r"batch\['labels'\]"
MASK = r"batch\['mask'\].*drop_last=True"

GENERATIVE_CASES = [
    # ------------------------------------------------------------- diffusion
    ("diffusion_images_rank3", _denoise(diffusion, images=images((B, 8, 8)), labels=labels()), ValueError,
     IMG + r".*\(B, 8, 8, 1\), got \(4, 8, 8\)"),
    ("diffusion_images_rgb", _denoise(diffusion, images=images((B, 8, 8, 3)), labels=labels()), ValueError,
     IMG + r".*got \(4, 8, 8, 3\)"),
    ("diffusion_int_images", _denoise(diffusion, images=images(dtype=np.int32), labels=labels()), ValueError,
     IMG + r".*floating point.*int32"),
    ("diffusion_string_images", _denoise(diffusion, images=strings(), labels=labels()), ValueError,
     IMG + r".*floating point.*<U3"),
    ("diffusion_label_10_of_10", _denoise(diffusion, images=images(), labels=labels(10)), ValueError,
     LAB + r".*\[0, 10\).*10\]"),
    ("diffusion_label_negative", _denoise(diffusion, images=images(), labels=labels(-1)), ValueError,
     LAB + r".*\[0, 10\).*\[-1,"),
    ("diffusion_float_labels", _denoise(diffusion, images=images(), labels=labels(dtype=np.float32)), ValueError,
     LAB + r".*integers.*float32"),
    ("diffusion_labels_column", _denoise(diffusion, images=images(), labels=labels(shape=(B, 1))), ValueError,
     LAB + r".*\(4,\).*\(4, 1\)"),
    ("diffusion_labels_fewer_rows", _denoise(diffusion, images=images(), labels=labels(shape=(B - 1,))), ValueError,
     LAB + r".*\(4,\).*\(3,\)"),
    ("diffusion_device_labels_column", _denoise(diffusion, images=jnp.asarray(images()),
                                                labels=jnp.asarray(labels(shape=(B, 1)))), ValueError, LAB),
    ("diffusion_missing_labels", _denoise(diffusion, images=images()), ValueError, r"num_classes=10.*" + LAB),
    ("diffusion_missing_images", _denoise(diffusion, labels=labels()), ValueError, r"'images'"),
    ("diffusion_mask_shape", _denoise(diffusion, images=images(), labels=labels(), mask=np.ones(B + 1, np.float32)),
     ValueError, r"batch\['mask'\].*\(4,\).*\(5,\)"),
    ("diffusion_linear_schedule_10_steps", lambda: DiffusionConfig(schedule="linear", num_timesteps=10), ValueError,
     r"beta_end.*num_timesteps=10"),
    ("diffusion_one_timestep", lambda: DiffusionConfig(num_timesteps=1), ValueError, r"num_timesteps.*got 1"),
    ("diffusion_float_timesteps", lambda: DiffusionConfig(num_timesteps=100.0), ValueError, r"num_timesteps"),
    ("diffusion_beta_start_above_end", lambda: DiffusionConfig(schedule="linear", beta_start=0.1, beta_end=0.01),
     ValueError, r"beta_start"),
    ("diffusion_unknown_schedule", lambda: DiffusionConfig(schedule="quadratic"), ValueError, r"schedule.*quadratic"),
    ("diffusion_unknown_prediction", lambda: DiffusionConfig(prediction="x0"), ValueError, r"prediction"),
    ("diffusion_ema_decay_1", lambda: DiffusionConfig(ema_decay=1.0), ValueError, r"ema_decay"),
    ("diffusion_cond_drop_1.5", lambda: DiffusionConfig(cond_drop_prob=1.5), ValueError, r"cond_drop_prob"),
    ("diffusion_more_sampling_steps_than_T", lambda: _sample(diffusion(), np.zeros(2, np.int32), num_steps=500),
     ValueError, r"num_steps.*num_timesteps=100"),
    ("diffusion_sample_label_11", lambda: _sample(diffusion(), np.array([0, 11])), ValueError, r"labels.*\[0, 10\]"),
    ("diffusion_guidance_unconditional", lambda: _sample(diffusion(False), np.zeros(2, np.int32), guidance=2.0),
     ValueError, r"guidance=2.0.*unconditional"),
    ("diffusion_negative_eta", lambda: _sample(diffusion(), np.zeros(2, np.int32), num_steps=2, eta=-1.0),
     ValueError, r"eta"),
    ("diffusion_unknown_sampler", lambda: _sample(diffusion(), np.zeros(2, np.int32), method="euler"),
     ValueError, r"method"),
    # ------------------------------------------------------------------ flow
    ("flow_flat_images", _denoise(flow, images=images((B, 64)), labels=labels()), ValueError, IMG + r".*\(4, 64\)"),
    ("flow_uint8_images", _denoise(flow, images=images(dtype=np.uint8), labels=labels()), ValueError,
     IMG + r".*uint8"),
    ("flow_label_12", _denoise(flow, images=images(), labels=labels(12)), ValueError, LAB + r".*12\]"),
    ("flow_ot_pairing_int_images", _denoise(lambda: flow(ot_pairing=True), images=images(dtype=np.int32),
                                            labels=labels()), ValueError, IMG + r".*int32"),
    ("flow_unknown_method", lambda: flow().sampler(method="rk4"), ValueError, r"method.*rk4"),
    ("flow_sde_negative_noise", lambda: _sample(flow(), np.zeros(2, np.int32), method="sde", noise_level=-1.0),
     ValueError, r"noise_level"),
    ("flow_ode_with_noise", lambda: flow().sampler(method="euler", noise_level=0.5), ValueError,
     r"noise_level=0.5.*method='sde'"),
    ("flow_ema_decay_negative", lambda: FlowConfig(ema_decay=-0.1), ValueError, r"ema_decay"),
    # ------------------------------------------------------------------- VAE
    ("vae_images_rank3", lambda: vae().train_step({"images": images((B, 8, 8))}), ValueError,
     IMG + r".*\(4, 8, 8\)"),
    ("vae_int_images", lambda: vae().train_step({"images": images(dtype=np.int32)}), ValueError, IMG + r".*int32"),
    ("vae_string_images", lambda: vae().train_step({"images": strings()}), TypeError, IMG),
    ("vae_images_16x16", lambda: vae().train_step({"images": images((B, 16, 16, 1))}), ValueError,
     IMG + r" of shape \(4, 16, 16, 1\).*\(B, 8, 8, 1\)"),
    ("vae_missing_images", lambda: vae().train_step({"x": images()}), KeyError, r"images"),
    ("vae_padding_mask", lambda: vae().train_step({"images": images(), "mask": np.ones(B, np.float32)}),
     ValueError, MASK),
    ("vae_unknown_likelihood", lambda: VAEConfig(likelihood="poisson"), ValueError, r"likelihood"),
    ("vae_decoder_std_0", lambda: VAEConfig(decoder_std=0.0), ValueError, r"decoder_std"),
    ("vae_negative_kl_weight", lambda: VAEConfig(kl_weight=-1.0), ValueError, r"kl_weight"),
    ("vae_fractional_warmup", lambda: VAEConfig(kl_warmup_steps=2.5), ValueError, r"kl_warmup_steps"),
    ("vae_negative_free_bits", lambda: VAEConfig(free_bits=-0.1), ValueError, r"free_bits"),
    # ------------------------------------------------------------------- GAN
    ("gan_images_rank3", lambda: gan().train_step({"images": images((B, 8, 8))}), ValueError,
     IMG + r".*\(4, 8, 8\)"),
    ("gan_int_images", lambda: gan().train_step({"images": images(dtype=np.int32)}), ValueError, IMG + r".*int32"),
    ("gan_string_images", lambda: gan().train_step({"images": strings()}), TypeError, IMG),
    ("gan_images_16x16", lambda: gan().train_step({"images": images((B, 16, 16, 1))}), ValueError,
     IMG + r" has shape \(4, 16, 16, 1\).*generator.*\(B, 8, 8, 1\)"),
    ("gan_images_rgb", lambda: gan().train_step({"images": images((B, 8, 8, 3))}), ValueError,
     IMG + r".*\(4, 8, 8, 3\)"),
    ("gan_missing_images", lambda: gan().train_step({"x": images()}), KeyError, r"images"),
    ("gan_padding_mask", lambda: gan().train_step({"images": images(), "mask": np.ones(B, np.float32)}),
     ValueError, MASK),
    ("gan_unknown_loss_type", lambda: GANConfig(loss_type="wgan"), ValueError, r"loss_type"),
    ("gan_n_critic_0", lambda: GANConfig(n_critic=0), ValueError, r"n_critic"),
    ("gan_negative_gp_weight", lambda: GANConfig(gp_weight=-1.0), ValueError, r"gp_weight"),
    ("gan_latent_dim_mismatch", lambda: gan(latent_dim=16), ValueError, r"latent_dim=16.*latent_dim=8"),
    ("gan_model_names", lambda: gan(names=("gen", "discriminator"), optimizers=("gen", "discriminator")),
     ValueError, r"'generator'.*got \['discriminator', 'gen'\]"),
    ("gan_missing_optimizer", lambda: gan(optimizers=("generator",)), ValueError, r"optimizer"),
    # ---------------------------------------------------------------- energy
    ("ebm_images_7x7", lambda: ebm().train_step({"images": images((B, 7, 7, 1))}), ValueError,
     IMG + r".*image_shape.*\(4, 7, 7, 1\)"),
    ("ebm_int_images", lambda: ebm().train_step({"images": images(dtype=np.int32)}), ValueError, IMG + r".*int32"),
    ("ebm_string_images", lambda: ebm().train_step({"images": strings()}), TypeError, IMG),
    ("ebm_missing_images", lambda: ebm().train_step({"x": images()}), KeyError, r"images"),
    ("ebm_padding_mask", lambda: ebm().train_step({"images": images(), "mask": np.ones(B, np.float32)}),
     ValueError, MASK),
    ("ebm_no_langevin_steps", lambda: EnergyConfig(langevin_steps=0), ValueError, r"langevin_steps"),
    ("ebm_buffer_prob_1.5", lambda: EnergyConfig(buffer_prob=1.5), ValueError, r"buffer_prob"),
    ("ebm_float_buffer_size", lambda: EnergyConfig(buffer_size=10.0), ValueError, r"buffer_size"),
    ("ebm_image_shape_2d", lambda: EnergyConfig(image_shape=(8, 8)), ValueError, r"image_shape"),
    ("ebm_image_shape_zero_channels", lambda: EnergyConfig(image_shape=(8, 8, 0)), ValueError, r"image_shape"),
    ("ebm_negative_step_size", lambda: EnergyConfig(step_size=-1.0), ValueError, r"step_size"),
    ("ebm_grad_clip_0", lambda: EnergyConfig(grad_clip=0.0), ValueError, r"grad_clip"),
]
