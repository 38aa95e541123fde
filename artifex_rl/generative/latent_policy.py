"""One-step (bandit) policies made of a generative model's parts, their rewards and their online source.

The seeds' last two integration examples, on the existing trainers:

* **PPO on VAE latents**: :class:`LatentActorCritic` is a VAE encoder
  ``x -> (mean, log_std)`` (the Gaussian policy ``pi(z | x)``; actions are
  latents ``z (B, D)``) plus a small value MLP on the image, returning
  ``((mean, log_std), value)`` as :class:`~artifex_rl.PPOTrainer` expects.
  The frozen decoder is the environment: it turns ``z`` into an image.
* **REINFORCE with a GAN discriminator as reward**: :class:`GaussianGenerator`
  makes a generator ``G`` a stochastic policy over images: given noise
  ``z (B, L)`` (the observation) the action is ``a = G(z) + sigma eps``,
  flattened to ``(B, H W C)``, i.e. ``pi(a | z) = N(G(z), sigma^2 I)``, with a
  fixed ``sigma`` (or a learned one). The reward is ORGAN's mixture
  (Guimaraes et al., 2017) ``lambda D(x) + (1 - lambda) task(x)``
  (:func:`organ_reward`, with :class:`DiscriminatorReward`'s ``sigmoid``
  of the frozen discriminator's logit as ``D``).

Episodes have one step, so :class:`BanditSource` makes each batch with the
current policy in one compiled call: observations, sampled actions, their
log-probs (and values), the rewards, ``dones = 1``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from artifex_rl.core.snapshot import as_policy_provider
from artifex_rl.rewards import CompositeReward, RewardFunction

Array = jax.Array


class LatentActorCritic(nnx.Module):
    """``x (B, H, W, C) -> ((mean, log_std), value)``: a VAE encoder as a Gaussian policy over latents, with a critic.

    Args:
      encoder: ``x -> (mean, log_std)``, each ``(B, D)`` (e.g. :class:`~artifex_rl.models.ConvEncoder`).
      image_size: ``H * W * C`` (the critic reads the flattened image).
      hidden: width of the critic's hidden layer.
      rngs: initialises the critic.
    """

    def __init__(self, encoder: nnx.Module, image_size: int, *, hidden: int = 64, rngs: nnx.Rngs):
        if not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.encoder = encoder
        self.image_size = image_size
        self.value_hidden = nnx.Linear(image_size, hidden, rngs=rngs)
        self.value_out = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x: Array) -> tuple[tuple[Array, Array], Array]:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.image_size:
            raise ValueError(f"LatentActorCritic: x must hold {self.image_size} values per image, got shape {x.shape}")
        value = self.value_out(jax.nn.silu(self.value_hidden(flat)))[:, 0]
        return self.encoder(x), value


class GaussianGenerator(nnx.Module):
    """``z (B, L) -> (mean, log_std)``, each ``(B, H W C)``: ``pi(a | z) = N(G(z), sigma^2 I)`` over flat images.

    Args:
      generator: ``z (B, L) -> images (B, H, W, C)``.
      sigma: the exploration noise (the initial one when ``learn_sigma``).
      learn_sigma: make ``log sigma`` a trained scalar parameter.
    """

    def __init__(self, generator: nnx.Module, sigma: float = 0.1, *, learn_sigma: bool = False):
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        self.generator = generator
        self.learn_sigma = learn_sigma
        log_sigma = jnp.log(jnp.asarray(sigma, jnp.float32))
        # A fixed sigma is not an nnx.Param, so the optimizer leaves it alone.
        self.log_sigma = nnx.Param(log_sigma) if learn_sigma else nnx.Variable(log_sigma)

    def __call__(self, z: Array) -> tuple[Array, Array]:
        images = self.generator(z)
        mean = images.reshape(images.shape[0], -1)
        return mean, jnp.broadcast_to(self.log_sigma[...], mean.shape)


class ReconstructionReward:
    """``-mean_pixels (samples - references)^2`` (per sample), ``references`` passed as a keyword.

    A reward of the seeds' form ``reward(samples, conditions, **kwargs) -> (B,)``
    that composes with :class:`~artifex_rl.rewards.CompositeReward` (which passes
    ``references=`` on to every part).
    """

    __name__ = "ReconstructionReward"

    def __call__(self, samples: Any, conditions: Any | None = None, *, references: Any = None, **kwargs: Any) -> Array:
        if references is None:
            raise ValueError("ReconstructionReward needs references=, the images (B, H, W, C) to reconstruct")
        samples, references = jnp.asarray(samples, jnp.float32), jnp.asarray(references, jnp.float32)
        if samples.shape != references.shape:
            raise ValueError(f"ReconstructionReward: references have shape {references.shape}, samples {samples.shape}")
        return -jnp.mean(jnp.square(samples - references), axis=tuple(range(1, samples.ndim)))


class DiscriminatorReward:
    """``sigmoid(D(samples))``: the frozen discriminator's probability that an image is real, in ``[0, 1]``.

    Args:
      discriminator: ``images (B, H, W, C) -> logits (B,)`` (its state is captured once).
    """

    def __init__(self, discriminator: nnx.Module):
        self.graphdef, self.state = nnx.split(discriminator)
        self.__name__ = "DiscriminatorReward"

    def __call__(self, samples: Any, conditions: Any | None = None, **kwargs: Any) -> Array:
        logits = nnx.merge(self.graphdef, self.state)(jnp.asarray(samples, jnp.float32))
        return jax.nn.sigmoid(logits)


def organ_reward(discriminator_reward: RewardFunction, task_reward: RewardFunction, lam: float) -> CompositeReward:
    """ORGAN's reward ``lam * D(x) + (1 - lam) * task(x)`` (Guimaraes et al., 2017, eq. 3).

    Args:
      discriminator_reward: ``D`` in ``[0, 1]`` (e.g. :class:`DiscriminatorReward`).
      task_reward: the objective (e.g. :class:`~artifex_rl.generative.DigitClassifierReward`).
      lam: in ``[0, 1]``; 1 is the GAN's own objective, 0 the task alone.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam (ORGAN's lambda) must be in [0, 1], got {lam!r}")
    return CompositeReward([discriminator_reward, task_reward], [lam, 1.0 - lam])


BatchFn = Callable[[nnx.Module, Array], dict[str, Array]]


class BanditSource:
    """An endless iterable of one-step batches made with the *current* policy (one compiled call each).

    ``fit`` must not read it ahead of the update (``depends_on_policy``).

    Args:
      policy: a trainer (or a zero-argument callable returning a
        :class:`~artifex_rl.core.snapshot.PolicySnapshot`).
      batch_fn: ``(model, key) -> batch``, pure and traceable: draws the
        observations, samples the actions, scores them (see the module doc).
      seed: batch ``i`` uses ``fold_in(key(seed), i)``.
    """

    depends_on_policy = True

    def __init__(self, policy: Any, batch_fn: BatchFn, seed: int):
        self.policy = as_policy_provider(policy)
        self.key = jax.random.key(seed)
        self.batches = 0

        @functools.partial(jax.jit, static_argnums=0)
        def make(graphdef, params, model_state, key):
            return batch_fn(nnx.merge(graphdef, params, model_state), key)

        self._make = make

    def __iter__(self) -> Iterator[dict[str, Array]]:
        while True:
            key = jax.random.fold_in(self.key, self.batches)
            self.batches += 1
            snapshot = self.policy()
            yield self._make(snapshot.graphdef, snapshot.params, snapshot.model_state, key)

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.batches = int(state["batches"])


__all__ = [
    "BanditSource",
    "DiscriminatorReward",
    "GaussianGenerator",
    "LatentActorCritic",
    "ReconstructionReward",
    "organ_reward",
]
