"""The DDIM/DDPM and flow-SDE samplers as a policy the RL trainers can train (DDPO, Flow-GRPO).

:class:`DenoisingChainPolicy` implements
:class:`~artifex_rl.distributions.chain.TrajectoryPolicy` for a denoiser
``model(x (B, 8, 8, C), t (B,), labels (B,) | None)``:

* **diffusion** (Black et al., 2023, DDPO): DDIM steps with ``eta > 0``
  (``eta = 1`` has DDPM's variance) over ``num_steps`` of the schedule's
  timesteps; step ``i`` is ``N(mu_theta(x_i, t_i), sigma_i^2 I)`` with the
  mean and std of :func:`~artifex_rl.generative.samplers.ddim_step_mean_std`.
  The last step lands on ``alpha_bar = 1`` with ``sigma = 0``: it is
  deterministic, so it is not an action and is never trained on.
* **flow** (Liu et al., 2025, Flow-GRPO): the reverse SDE with the ODE's
  marginals, ``sigma_t = a sqrt(t / (1 - t))``
  (:func:`~artifex_rl.generative.samplers.flow_sde_step_mean_std`), time
  from 1 (noise) to 0 (data).

``rollout`` IS the standalone sampler (:func:`diffusion_sample` /
:func:`flow_sde_sample` with ``return_chain=True``), with the key split the
way :meth:`DiffusionTrainer.sampler` splits it, so a compiled RL step draws
exactly the samples ``trainer.sample`` would. ``score`` re-evaluates stored
steps with the steps **flattened into the batch** (one forward of ``B x K``
images): the gradient of a conv net inside a rolled ``lax.scan`` is ~16x
slower on XLA:CPU (jax#12868), and a flat batch is also what fills a GPU.
``train_fraction < 1`` trains on a random subset of each chain's stochastic
steps (DDPO's ``timestep_fraction``; Flow-GRPO's shorter training chain).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from artifex_rl.distributions.chain import (
    StepScores,
    Trajectory,
    gaussian_step_entropy,
    gaussian_step_kl,
    gaussian_step_log_prob,
)
from artifex_rl.generative.samplers import (
    DEFAULT_UNROLL,
    ddim_step_mean_std,
    diffusion_sample,
    flow_sde_sample,
    flow_sde_step_mean_std,
    flow_time_grid,
)
from artifex_rl.generative.schedules import NoiseSchedule, sampling_timesteps

Array = jax.Array
KINDS = ("diffusion", "flow")


@dataclasses.dataclass(frozen=True, eq=False)
class DenoisingChainPolicy:
    """A denoising sampler as a policy over its steps (see the module docstring).

    Build it with :meth:`diffusion` or :meth:`flow`.

    Attributes:
      kind: ``"diffusion"`` or ``"flow"``.
      num_steps: ``S``, the sampling steps of a chain.
      schedule: the diffusion model's :class:`NoiseSchedule` (diffusion only).
      eta: DDIM's noise scale, ``> 0`` (diffusion only).
      prediction: what the denoiser predicts, ``"epsilon"`` or ``"v"`` (diffusion only).
      clip_x0: clip the predicted clean image to ``[-1, 1]`` inside each step's mean.
      noise_level: Flow-GRPO's ``a`` (flow only), ``> 0``.
      train_fraction: fraction of each chain's stochastic steps trained on, in ``(0, 1]``.
      image_shape: ``(H, W, C)`` of a sample.
    """

    kind: str
    num_steps: int
    schedule: NoiseSchedule | None = None
    eta: float = 1.0
    prediction: str = "epsilon"
    clip_x0: bool = True
    noise_level: float = 0.7
    train_fraction: float = 1.0
    image_shape: tuple[int, int, int] = (8, 8, 1)
    unroll: int | bool = DEFAULT_UNROLL

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 2:
            raise ValueError(f"num_steps must be an int >= 2, got {self.num_steps!r}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.kind == "diffusion":
            if self.schedule is None:
                raise ValueError("kind='diffusion' needs the model's schedule (DenoisingChainPolicy.diffusion(schedule))")
            if not self.eta > 0:
                raise ValueError(f"eta must be > 0: with eta = 0 DDIM is deterministic and has no policy, got {self.eta}")
            sampling_timesteps(self.schedule.num_timesteps, self.num_steps)  # raises on a bad num_steps
        elif not self.noise_level > 0:
            raise ValueError(
                f"noise_level must be > 0: with 0 the flow sampler is the deterministic ODE, got {self.noise_level}"
            )
        if not self.stochastic_steps.size:
            raise ValueError("the sampler has no stochastic step to train")

    # ---- construction ---------------------------------------------------- #
    @classmethod
    def diffusion(cls, schedule: NoiseSchedule, *, num_steps: int = 10, eta: float = 1.0, **kwargs: Any):
        """DDIM with ``eta`` over ``num_steps`` of ``schedule`` (DDPO's policy)."""
        return cls("diffusion", num_steps, schedule=schedule, eta=eta, **kwargs)

    @classmethod
    def flow(cls, *, num_steps: int = 10, noise_level: float = 0.7, **kwargs: Any):
        """The flow model's SDE sampler (Flow-GRPO's policy)."""
        return cls("flow", num_steps, noise_level=noise_level, **kwargs)

    # ---- per-step constants (numpy: static under jit) --------------------- #
    @property
    def _diffusion_levels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(t (S,), alpha_bar (S,), alpha_bar_next (S,))`` exactly as :func:`diffusion_sample` builds them."""
        ks = sampling_timesteps(self.schedule.num_timesteps, self.num_steps)
        ab_all = np.asarray(self.schedule.alpha_bars, np.float32)
        ab = ab_all[ks]
        ab_next = np.concatenate([ab_all[ks[1:]], np.ones((1,), np.float32)])
        return (ks.astype(np.float32) / self.schedule.num_timesteps).astype(np.float32), ab, ab_next

    @property
    def step_stds(self) -> np.ndarray:
        """``(S,)`` standard deviation of each step (0: deterministic)."""
        if self.kind == "diffusion":
            _, ab, ab_next = self._diffusion_levels
            var = (1.0 - ab_next) / (1.0 - ab) * np.maximum(1.0 - ab / ab_next, 0.0)
            return (self.eta * np.sqrt(np.maximum(var, 0.0))).astype(np.float32)
        ts = np.linspace(1.0, 0.0, self.num_steps + 1, dtype=np.float32)  # flow_time_grid, as numpy
        t_cap = ts[1]
        sigma = self.noise_level * np.sqrt(ts[:-1] / (1.0 - np.minimum(ts[:-1], t_cap)))
        return (sigma * np.sqrt(ts[:-1] - ts[1:])).astype(np.float32)

    @property
    def stochastic_steps(self) -> np.ndarray:
        """Indices of the steps with ``std > 0``: the actions of the MDP."""
        return np.flatnonzero(self.step_stds > 1e-8).astype(np.int32)

    @property
    def steps_per_chain(self) -> int:
        """``K``: the steps of each chain trained on."""
        return max(1, int(round(self.train_fraction * self.stochastic_steps.size)))

    # ---- the protocol ---------------------------------------------------- #
    def labels_for(self, model: Any, conditions: Array | None) -> Array | None:
        """The labels handed to the denoiser: ``None`` for an unconditional model."""
        if getattr(model, "num_classes", None) is None or conditions is None:
            return None
        return jnp.asarray(conditions).astype(jnp.int32)

    def rollout(self, model: Any, conditions: Array, key: Array) -> Trajectory:
        """Sample one chain per row of ``conditions (B,)`` (initial noise from ``split(key)[0]``,
        the steps' noise from ``split(key)[1]``, as :meth:`DiffusionTrainer.sampler`)."""
        b = jnp.shape(conditions)[0]
        k_noise, k_steps = jax.random.split(key)
        noise = jax.random.normal(k_noise, (b, *self.image_shape))
        labels = self.labels_for(model, conditions)
        model_fn = lambda x, t, y: model(x, t, y)  # noqa: E731 - the samplers' ModelFn
        if self.kind == "diffusion":
            chain = diffusion_sample(
                model_fn, self.schedule, noise, k_steps, labels, num_steps=self.num_steps, method="ddim",
                eta=self.eta, prediction=self.prediction, clip_x0=self.clip_x0, unroll=self.unroll,
                return_chain=True,
            )
        else:
            chain = flow_sde_sample(
                model_fn, noise, k_steps, labels, num_steps=self.num_steps, noise_level=self.noise_level,
                unroll=self.unroll, return_chain=True,
            )
        states = jnp.moveaxis(chain["latents"], 0, 1)  # (B, S + 1, ...)
        return Trajectory(jax.lax.stop_gradient(chain["x0"]), jax.lax.stop_gradient(states))

    def training_steps(self, key: Array, batch_size: int) -> Array:
        """``(B, K)`` sorted step indices per chain: every stochastic step, or a random ``K`` of them."""
        steps = jnp.asarray(self.stochastic_steps)
        k = self.steps_per_chain
        if k == steps.size:
            return jnp.broadcast_to(steps, (batch_size, k))
        keys = jax.random.split(key, batch_size)
        return jax.vmap(lambda kk: jnp.sort(jax.random.choice(kk, steps, (k,), replace=False)))(keys)

    def score(self, model: Any, conditions: Array, states: Array, steps: Array) -> StepScores:
        """Per-pixel-mean log-densities of steps ``steps (B, K)`` of ``states (B, S + 1, ...)``.

        One forward pass of the ``B x K`` step inputs, flattened into the batch.
        """
        b, k = steps.shape
        x_t = jnp.take_along_axis(states, _expand(steps, states), axis=1)
        x_next = jnp.take_along_axis(states, _expand(steps + 1, states), axis=1)
        flat_x = x_t.reshape(b * k, *states.shape[2:])
        flat_steps = steps.reshape(-1)
        labels = self.labels_for(model, conditions)
        flat_labels = None if labels is None else jnp.repeat(labels, k)
        shape = (b * k,) + (1,) * (flat_x.ndim - 1)
        if self.kind == "diffusion":
            t, ab, ab_next = (jnp.asarray(a)[flat_steps] for a in self._diffusion_levels)
            pred = model(flat_x, t, flat_labels)
            mean, std = ddim_step_mean_std(
                flat_x, pred, ab.reshape(shape), ab_next.reshape(shape), eta=self.eta,
                prediction=self.prediction, clip_x0=self.clip_x0,
            )
        else:
            ts = flow_time_grid(self.num_steps)
            t, t_next = ts[:-1][flat_steps], ts[1:][flat_steps]
            v = model(flat_x, t, flat_labels)
            mean, std = flow_sde_step_mean_std(
                flat_x, v, t.reshape(shape), t_next.reshape(shape), noise_level=self.noise_level, t_cap=ts[1]
            )
        mean = mean.reshape(x_t.shape)
        std = jnp.broadcast_to(std, shape).reshape(b, k)
        return StepScores(gaussian_step_log_prob(x_next, mean, std), mean, std)

    def kl(self, scores: StepScores, reference_means: Array) -> Array:
        """``(B, K)`` closed-form per-pixel KL to the reference's step means."""
        return gaussian_step_kl(scores.means, reference_means, scores.stds)

    def entropy(self, scores: StepScores) -> Array:
        """``(B, K)`` per-pixel entropy of each step (fixed by the sampler)."""
        return gaussian_step_entropy(scores.stds)


def _expand(steps: Array, states: Array) -> Array:
    return steps.reshape(steps.shape + (1,) * (states.ndim - 2))


__all__ = ["KINDS", "DenoisingChainPolicy"]
