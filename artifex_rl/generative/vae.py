"""VAE training: the ELBO with a Gaussian encoder, KL annealing and free bits (Kingma & Welling, 2014).

The model is one container :class:`VAE` holding ``encoder`` (``x -> (mean,
log_std)``) and ``decoder`` (``z -> logits`` or means), trained with ONE
optimizer: the ELBO is a single objective of both networks, so two named
models with two optimizers would only add state. ``vae.encoder`` is the
Gaussian policy the RL fine-tuning can reuse.

Per sample ``x`` (pixels in ``[-1, 1]``), ``z = mean + exp(log_std) eps``:

* reconstruction ``-log p(x | z)`` summed over pixels: Bernoulli on
  ``t = (x + 1) / 2`` with logits ``l``: ``softplus(l) - t l``; or Gaussian
  with fixed ``sigma``: ``(x - mu)^2 / (2 sigma^2) + log sigma + log(2 pi) / 2``;
* ``KL_d = (mean_d^2 + exp(2 log_std_d) - 1) / 2 - log_std_d`` per latent dimension;
* free bits (Kingma et al., 2016): each dimension's batch-mean KL is floored at
  ``free_bits`` nats, ``KL_fb = sum_d max(mean_b KL_bd, free_bits)``;
* KL annealing: ``beta_t = kl_weight * min(1, t / kl_warmup_steps)`` with ``t``
  the number of steps taken before this one.

``loss = mean_b recon_b + beta_t KL_fb``. The step counter lives in
``train_state["extra"]["step"]`` (checkpointed) and reaches ``compute_loss`` as
the per-sample ``batch["kl_weight"] (B,)``, so minibatching and gradient
accumulation still split the batch along its first axis.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from artifex_rl.batches import refuse_mask, require
from artifex_rl.config import TrainerConfig
from artifex_rl.trainer import Trainer

Array = jax.Array
LIKELIHOODS = ("bernoulli", "gaussian")


@dataclasses.dataclass(frozen=True, kw_only=True)
class VAEConfig(TrainerConfig):
    """Settings of :class:`VAETrainer`.

    Attributes:
      likelihood: ``"bernoulli"`` (decoder outputs logits) or ``"gaussian"`` (decoder outputs means).
      decoder_std: ``sigma`` of the Gaussian likelihood.
      kl_weight: the final ``beta``.
      kl_warmup_steps: steps of the linear warm-up of ``beta`` from 0 (0: no warm-up).
      free_bits: floor, in nats, of each latent dimension's batch-mean KL (0: off).
    """

    likelihood: str = "bernoulli"
    decoder_std: float = 0.1
    kl_weight: float = 1.0
    kl_warmup_steps: int = 0
    free_bits: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"VAEConfig.likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if not self.decoder_std > 0:
            raise ValueError(f"VAEConfig.decoder_std must be > 0, got {self.decoder_std!r}")
        if self.kl_weight < 0:
            raise ValueError(f"VAEConfig.kl_weight must be >= 0, got {self.kl_weight!r}")
        if not isinstance(self.kl_warmup_steps, int) or self.kl_warmup_steps < 0:
            raise ValueError(f"VAEConfig.kl_warmup_steps must be an int >= 0, got {self.kl_warmup_steps!r}")
        if self.free_bits < 0:
            raise ValueError(f"VAEConfig.free_bits must be >= 0, got {self.free_bits!r}")


class VAE(nnx.Module):
    """``encoder: x -> (mean, log_std)`` and ``decoder: z -> (B, H, W, C)`` in one module."""

    def __init__(self, encoder: nnx.Module, decoder: nnx.Module):
        self.encoder = encoder
        self.decoder = decoder


def gaussian_kl(mean: Array, log_std: Array) -> Array:
    """``KL(N(mean, exp(log_std)^2) || N(0, 1))`` per dimension, shape of ``mean``."""
    return 0.5 * (mean**2 + jnp.exp(2.0 * log_std) - 1.0) - log_std


def reconstruction_nll(x: Array, out: Array, likelihood: str, decoder_std: float = 0.1) -> Array:
    """``-log p(x | z)`` per sample ``(B,)``; ``out`` is logits (Bernoulli) or means (Gaussian)."""
    axes = tuple(range(1, x.ndim))
    if likelihood == "bernoulli":
        t = (x + 1.0) / 2.0
        return jnp.sum(jax.nn.softplus(out) - t * out, axis=axes)
    if likelihood == "gaussian":
        per = (x - out) ** 2 / (2 * decoder_std**2) + math.log(decoder_std) + 0.5 * math.log(2 * math.pi)
        return jnp.sum(per, axis=axes)
    raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def elbo_loss(x: Array, out: Array, mean: Array, log_std: Array, beta: Array, *, likelihood: str,
              decoder_std: float = 0.1, free_bits: float = 0.0) -> tuple[Array, dict[str, Array]]:
    """The negative ELBO with free bits and weight ``beta`` (module docstring); returns ``(loss, metrics)``."""
    recon = jnp.mean(reconstruction_nll(x, out, likelihood, decoder_std))
    kl_dims = jnp.mean(gaussian_kl(mean, log_std), axis=0)  # (latent_dim,)
    kl = jnp.sum(kl_dims)
    kl_fb = jnp.sum(jnp.maximum(kl_dims, free_bits))
    return recon + beta * kl_fb, {"recon": recon, "kl": kl, "elbo": -(recon + kl), "beta": beta}


class VAETrainer(Trainer):
    """ELBO training of a :class:`VAE` (see the module docstring). Batch: ``{"images": (B, H, W, C)}``."""

    config_class = VAEConfig
    config: VAEConfig

    def init_extra_state(self) -> dict[str, Array]:
        return {"step": jnp.zeros((), jnp.int32)}

    def kl_beta(self, step: Array) -> Array:
        """``beta`` after ``step`` completed steps."""
        cfg = self.config
        if cfg.kl_warmup_steps == 0:
            return jnp.asarray(cfg.kl_weight, jnp.float32)
        return cfg.kl_weight * jnp.minimum(1.0, step.astype(jnp.float32) / cfg.kl_warmup_steps)

    def before_update(self, extra, model, batch, rng):
        require(batch, ["images"], type(self).__name__)
        refuse_mask(batch, type(self).__name__)
        n = jnp.shape(batch["images"])[0]
        batch = {**batch, "kl_weight": jnp.full((n,), self.kl_beta(extra["step"]), jnp.float32)}
        return {"step": extra["step"] + 1}, batch

    def compute_loss(self, model: VAE, batch: Mapping[str, Array], rng: Array) -> tuple[Array, dict[str, Array]]:
        x = batch["images"]
        if jnp.ndim(x) != 4 or not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
            raise ValueError(
                f"VAETrainer: batch['images'] must be float (B, H, W, C) in [-1, 1], got shape "
                f"{jnp.shape(x)} dtype {jnp.asarray(x).dtype}"
            )
        try:
            mean, log_std = model.encoder(x)
        except ValueError as err:  # the model's own check names its argument, not the batch key
            raise ValueError(f"VAETrainer: the encoder refused batch['images'] of shape {jnp.shape(x)}: {err}") from err
        z = mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape)
        out = model.decoder(z)
        if out.shape != x.shape:
            raise ValueError(f"VAETrainer: the decoder must return images of shape {x.shape}, got {out.shape}")
        cfg = self.config
        return elbo_loss(x, out, mean, log_std, batch["kl_weight"][0], likelihood=cfg.likelihood,
                         decoder_std=cfg.decoder_std, free_bits=cfg.free_bits)

    def sample(self, n: int, key: Array) -> Array:
        """``n`` images ``(n, H, W, C)`` in ``[-1, 1]``: the decoder's mean at ``z ~ N(0, I)``
        (for Bernoulli, ``2 sigmoid(logits) - 1``: the expected grey level)."""
        decoder = self.model.decoder
        return _decode_mean(decoder, jax.random.normal(key, (n, decoder.latent_dim)), self.config.likelihood)


@nnx.jit(static_argnums=2)
def _decode_mean(decoder: nnx.Module, z: Array, likelihood: str) -> Array:
    out = decoder(z)
    return 2.0 * jax.nn.sigmoid(out) - 1.0 if likelihood == "bernoulli" else out


__all__ = ["VAE", "VAEConfig", "VAETrainer", "elbo_loss", "gaussian_kl", "reconstruction_nll"]
