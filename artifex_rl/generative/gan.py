"""GAN training: a generator and a discriminator, two optimizers, one compiled step.

:class:`GANTrainer` is the base ``Trainer`` with two named models,
``{"generator": G, "discriminator": D}``, each with its own optimizer. Its
:meth:`~GANTrainer.update_phases` runs, on every batch of real images, the
discriminator update ``n_critic`` times and then one generator update, all
inside the one compiled step (no GAN code in the core).

Losses, with ``r = D(x)`` on real images and ``f = D(G(z))``, ``z ~ N(0, I)``
(means over the batch):

* ``"non_saturating"`` (Goodfellow et al., 2014): ``L_D = softplus(-r) + softplus(f)``,
  ``L_G = softplus(-f)`` (i.e. ``-log sigmoid(f)``);
* ``"hinge"`` (Lim & Ye, 2017; Miyato et al., 2018): ``L_D = relu(1 - r) + relu(1 + f)``, ``L_G = -f``;
* ``"least_squares"`` (Mao et al., 2017): ``L_D = ((r - 1)^2 + f^2) / 2``, ``L_G = (f - 1)^2 / 2``;
* ``"wgan_gp"`` (Gulrajani et al., 2017): ``L_D = f - r + lambda (||grad_x D(x_hat)||_2 - 1)^2``
  with ``x_hat = e x + (1 - e) G(z)``, ``e ~ U(0, 1)`` per sample; ``L_G = -f``.

A batch is ``{"images": (B, 8, 8, 1)}`` float in ``[-1, 1]`` (other keys are ignored).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from artifex_rl.batches import refuse_mask, require
from artifex_rl.config import TrainerConfig
from artifex_rl.core.update import UpdatePhase
from artifex_rl.trainer import Trainer

Array = jax.Array
LOSS_TYPES = ("non_saturating", "hinge", "least_squares", "wgan_gp")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GANConfig(TrainerConfig):
    """Settings of :class:`GANTrainer`.

    Attributes:
      loss_type: one of ``"non_saturating"``, ``"hinge"``, ``"least_squares"``, ``"wgan_gp"``.
      n_critic: discriminator updates per generator update (each on the same real batch, fresh ``z``).
      gp_weight: ``lambda`` of the WGAN-GP gradient penalty (used by ``"wgan_gp"`` only).
      latent_dim: size of ``z``; must match the generator's.
    """

    loss_type: str = "non_saturating"
    n_critic: int = 1
    gp_weight: float = 10.0
    latent_dim: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"GANConfig.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if not isinstance(self.n_critic, int) or self.n_critic < 1:
            raise ValueError(f"GANConfig.n_critic must be an int >= 1, got {self.n_critic!r}")
        if self.gp_weight < 0:
            raise ValueError(f"GANConfig.gp_weight must be >= 0, got {self.gp_weight!r}")
        if not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise ValueError(f"GANConfig.latent_dim must be a positive int, got {self.latent_dim!r}")


def discriminator_loss(real_logits: Array, fake_logits: Array, loss_type: str) -> Array:
    """``L_D`` without the gradient penalty (see the module docstring); ``(B,)`` logits -> scalar."""
    r, f = real_logits, fake_logits
    if loss_type == "non_saturating":
        return jnp.mean(jax.nn.softplus(-r)) + jnp.mean(jax.nn.softplus(f))
    if loss_type == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
    if loss_type == "least_squares":
        return 0.5 * (jnp.mean((r - 1.0) ** 2) + jnp.mean(f**2))
    if loss_type == "wgan_gp":
        return jnp.mean(f) - jnp.mean(r)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def generator_loss(fake_logits: Array, loss_type: str) -> Array:
    """``L_G`` (see the module docstring); ``(B,)`` logits of generated images -> scalar."""
    f = fake_logits
    if loss_type == "non_saturating":
        return jnp.mean(jax.nn.softplus(-f))
    if loss_type in ("hinge", "wgan_gp"):
        return -jnp.mean(f)
    if loss_type == "least_squares":
        return 0.5 * jnp.mean((f - 1.0) ** 2)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def gradient_penalty(critic: Callable[[Array], Array], real: Array, fake: Array, eps: Array) -> Array:
    """``mean_b (||grad_x D(x_hat_b)||_2 - 1)^2`` with ``x_hat = eps x + (1 - eps) fake``.

    Args:
      critic: ``(B, ...) -> (B,)``, each output depending only on its own sample
        (no batch statistics), so ``grad sum_b D(x_hat)_b`` is the per-sample gradient.
      real, fake: ``(B, ...)``.
      eps: ``(B,)`` interpolation weights in ``[0, 1]``.
    """
    e = eps.reshape((-1,) + (1,) * (real.ndim - 1))
    x_hat = e * real + (1.0 - e) * fake
    grads = jax.grad(lambda x: jnp.sum(critic(x)))(x_hat)
    norms = jnp.sqrt(jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, axis=1) + 1e-12)
    return jnp.mean((norms - 1.0) ** 2)


class GANTrainer(Trainer):
    """Adversarial training of ``{"generator", "discriminator"}`` with two optimizers.

    Example::

        trainer = GANTrainer(
            {"generator": Generator(32, rngs=nnx.Rngs(0)), "discriminator": Discriminator(rngs=nnx.Rngs(1))},
            {"generator": optax.adam(2e-4, b1=0.5), "discriminator": optax.adam(2e-4, b1=0.5)},
            GANConfig(loss_type="hinge"),
        )
        trainer.fit(ArrayDataLoader(load_digits_split().train(), 64), max_steps=2000)
        images = trainer.sample(500, jax.random.PRNGKey(0))
    """

    config_class = GANConfig
    config: GANConfig
    MODEL_NAMES = ("generator", "discriminator")

    def __init__(self, models: Mapping[str, nnx.Module], optimizers: Mapping[str, Any], config: GANConfig | None = None,
                 **kwargs: Any):
        if not isinstance(models, Mapping) or set(models) != set(self.MODEL_NAMES):
            got = sorted(models) if isinstance(models, Mapping) else type(models).__name__
            raise ValueError(f"GANTrainer needs models {{'generator': G, 'discriminator': D}}, got {got}")
        super().__init__(models, optimizers, config, **kwargs)
        latent = getattr(models["generator"], "latent_dim", self.config.latent_dim)
        if latent != self.config.latent_dim:
            raise ValueError(
                f"GANConfig.latent_dim={self.config.latent_dim} but the generator takes latent_dim={latent}"
            )

    def update_phases(self) -> tuple[UpdatePhase, ...]:
        return (
            UpdatePhase("discriminator", ("discriminator",), repeats=self.config.n_critic),
            UpdatePhase("generator", ("generator",)),
        )

    def compute_loss(self, models: Mapping[str, nnx.Module], batch: Mapping[str, Array], rng: Array, phase: str):
        require(batch, ["images"], type(self).__name__)
        refuse_mask(batch, type(self).__name__)
        real = batch["images"]
        if jnp.ndim(real) != 4 or not jnp.issubdtype(jnp.asarray(real).dtype, jnp.floating):
            raise ValueError(
                f"GANTrainer: batch['images'] must be float (B, H, W, C) in [-1, 1], got shape "
                f"{jnp.shape(real)} dtype {jnp.asarray(real).dtype}"
            )
        g, d = models["generator"], models["discriminator"]
        cfg = self.config
        z_key, eps_key = jax.random.split(rng)
        z = jax.random.normal(z_key, (real.shape[0], cfg.latent_dim))
        fake = g(z)
        if real.shape[1:] != fake.shape[1:]:
            raise ValueError(f"GANTrainer: batch['images'] has shape {real.shape}, but the generator makes images "
                             f"of shape (B, {', '.join(map(str, fake.shape[1:]))})")
        if phase == "discriminator":
            fake = jax.lax.stop_gradient(fake)
            r, f = d(real), d(fake)
            loss = discriminator_loss(r, f, cfg.loss_type)
            metrics = {"d_real": jnp.mean(r), "d_fake": jnp.mean(f)}
            if cfg.loss_type == "wgan_gp":
                eps = jax.random.uniform(eps_key, (real.shape[0],))
                gp = gradient_penalty(d, real, fake, eps)
                loss = loss + cfg.gp_weight * gp
                metrics["gradient_penalty"] = gp
            return loss, metrics
        f = d(fake)
        return generator_loss(f, cfg.loss_type), {}

    def sample(self, n: int, key: Array) -> Array:
        """``n`` generated images ``(n, H, W, C)`` in ``[-1, 1]`` (one compiled call)."""
        g = self.models["generator"]
        return _generate(g, jax.random.normal(key, (n, self.config.latent_dim)))


@nnx.jit
def _generate(g: nnx.Module, z: Array) -> Array:
    return g(z)
