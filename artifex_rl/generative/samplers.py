"""Compiled samplers of the denoising models: DDPM / DDIM chains and flow ODE / SDE integrators.

Every sampler is a pure function of ``(model_fn, arrays, key)`` and a
``lax.scan`` over its steps, so it runs inside any ``jax.jit`` (an RL step
that samples and scores in one call) as well as on its own. ``model_fn(x (B,
8, 8, C), t (B,), labels (B,) | None)`` is the denoiser (e.g.
:class:`~artifex_rl.models.DenoiserUNet` merged from the EMA parameters).

Each stochastic step is a Gaussian with a known mean and standard deviation;
:func:`ddim_step_mean_std`, :func:`ddpm_step_mean_std` and
:func:`flow_sde_step_mean_std` return them, and ``return_chain=True`` returns
every step's latents, means and stds, which is what a policy-gradient method
on the sampler (DDPO, Flow-GRPO) needs for its log-probabilities.

Classifier-free guidance (Ho & Salimans, 2022) mixes the conditional and the
null-label predictions ``u + w (c - u)`` (``w = guidance``; 1 is the plain
conditional model); both come from one forward pass of a doubled batch.

Unrolling: the U-Net forward inside a rolled ``lax.scan`` (no gradient) was
measured on 2 shared CPU cores (``bench/diffusion_step.py --sampler``): see
:data:`DEFAULT_UNROLL` for the numbers behind the default (unrolled).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from artifex_rl.generative.schedules import NoiseSchedule, sampling_timesteps

Array = jax.Array
ModelFn = Callable[[Array, Array, Array | None], Array]

#: ``unroll`` of the sampling scans. Measured (``bench/diffusion_step.py --sampler``:
#: 200 samples, 20 DDIM steps, guidance 2, U-Net (32, 64), 2 shared CPU cores
#: under load ~10): rolled 7.8 s a call after 12.6 s of compile, unrolled 5.6 s
#: after 16.5 s. The forward-only conv is hurt less than a gradient (jax#12868)
#: but still ~1.4x; samplers are called many times (evaluation, RL), so unroll.
DEFAULT_UNROLL: int | bool = True


def guided(model_fn: ModelFn, x: Array, t: Array, labels: Array | None, guidance: float, null_label: int | None) -> Array:
    """The model's prediction with classifier-free guidance ``u + w (c - u)``.

    ``labels=None`` or ``guidance == 1`` is one plain forward pass; otherwise
    one pass over ``concat([x, x])`` with ``concat([labels, null])``.
    """
    if labels is None or guidance == 1.0:
        return model_fn(x, t, labels)
    if null_label is None:
        raise ValueError("guidance != 1 needs a model with a null label (a class-conditional model)")
    b = x.shape[0]
    both = model_fn(
        jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([labels, jnp.full_like(labels, null_label)])
    )
    cond, uncond = both[:b], both[b:]
    return uncond + guidance * (cond - uncond)


def _bcast(a: Array, x: Array) -> Array:
    a = jnp.asarray(a, jnp.float32)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


# --------------------------------------------------------------------------- #
# Diffusion: predictions, single steps, chains
# --------------------------------------------------------------------------- #
def x0_and_eps(x: Array, pred: Array, alpha_bar: Array, prediction: str) -> tuple[Array, Array]:
    """``(x0_hat, eps_hat)`` from the model's output at noise level ``alpha_bar``.

    ``"epsilon"``: ``x0 = (x - sqrt(1 - ab) eps) / sqrt(ab)``; ``"v"`` (Salimans &
    Ho, 2022): ``x0 = sqrt(ab) x - sqrt(1 - ab) v``, ``eps = sqrt(1 - ab) x + sqrt(ab) v``.
    """
    a, s = jnp.sqrt(_bcast(alpha_bar, x)), jnp.sqrt(1.0 - _bcast(alpha_bar, x))
    if prediction == "epsilon":
        return (x - s * pred) / a, pred
    if prediction == "v":
        return a * x - s * pred, s * x + a * pred
    raise ValueError(f"prediction must be 'epsilon' or 'v', got {prediction!r}")


def _clipped(x: Array, x0: Array, eps: Array, alpha_bar: Array, clip_x0: bool) -> tuple[Array, Array]:
    if not clip_x0:
        return x0, eps
    # eps re-derived from the clipped x0 keeps the pair consistent with x.
    x0 = jnp.clip(x0, -1.0, 1.0)
    a, s = jnp.sqrt(_bcast(alpha_bar, x)), jnp.sqrt(1.0 - _bcast(alpha_bar, x))
    return x0, (x - a * x0) / jnp.maximum(s, 1e-8)


def ddim_step_mean_std(
    x: Array, pred: Array, alpha_bar: Array, alpha_bar_prev: Array, *, eta: float, prediction: str,
    clip_x0: bool = False,
) -> tuple[Array, Array]:
    """One DDIM step (Song et al., 2021, eq. 12) as a Gaussian: ``(mean (B, ...), std ())``.

    ``sigma = eta sqrt((1 - ab') / (1 - ab)) sqrt(1 - ab / ab')``,
    ``mean = sqrt(ab') x0 + sqrt(1 - ab' - sigma^2) eps``. ``eta = 0`` is the
    deterministic ODE step; with ``ab' > ab`` it runs the ODE forward (inversion).
    """
    x0, eps = _clipped(x, *x0_and_eps(x, pred, alpha_bar, prediction), alpha_bar, clip_x0)
    ab, ab_prev = jnp.asarray(alpha_bar, jnp.float32), jnp.asarray(alpha_bar_prev, jnp.float32)
    var = (1.0 - ab_prev) / (1.0 - ab) * jnp.maximum(1.0 - ab / ab_prev, 0.0)
    std = eta * jnp.sqrt(jnp.maximum(var, 0.0))
    mean = jnp.sqrt(ab_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - ab_prev - std**2, 0.0)) * eps
    return mean, std


def ddpm_step_mean_std(
    x: Array, pred: Array, alpha_bar: Array, alpha_bar_prev: Array, *, prediction: str, clip_x0: bool = True
) -> tuple[Array, Array]:
    """The DDPM posterior ``q(x' | x, x0_hat)`` (Ho et al., 2020, eq. 6-7) as ``(mean, std)``.

    With ``beta = 1 - ab / ab'`` (the step's beta, also for strided steps):
    ``mean = sqrt(ab') beta / (1 - ab) x0 + sqrt(1 - beta) (1 - ab') / (1 - ab) x``,
    ``std = sqrt((1 - ab') / (1 - ab) beta)``.
    """
    x0, _ = _clipped(x, *x0_and_eps(x, pred, alpha_bar, prediction), alpha_bar, clip_x0)
    ab, ab_prev = jnp.asarray(alpha_bar, jnp.float32), jnp.asarray(alpha_bar_prev, jnp.float32)
    beta = 1.0 - ab / ab_prev
    mean = jnp.sqrt(ab_prev) * beta / (1.0 - ab) * x0 + jnp.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab) * x
    std = jnp.sqrt(jnp.maximum((1.0 - ab_prev) / (1.0 - ab) * beta, 0.0))
    return mean, std


def diffusion_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    noise: Array,
    key: Array,
    labels: Array | None = None,
    *,
    num_steps: int = 50,
    method: str = "ddim",
    eta: float = 0.0,
    guidance: float = 1.0,
    null_label: int | None = None,
    prediction: str = "epsilon",
    clip_x0: bool = True,
    unroll: int | bool = DEFAULT_UNROLL,
    return_chain: bool = False,
) -> Any:
    """Denoise ``noise`` (``x_{T-1}``, ``(B, 8, 8, C)``) in ``num_steps`` DDPM or DDIM steps.

    Step ``i`` goes from index ``k_i`` to ``k_{i+1}`` of :func:`sampling_timesteps`
    (the last to ``alpha_bar = 1``, the clean image); its Gaussian noise is
    ``normal(fold_in(key, i))``. ``method="ddpm"`` is ancestral sampling with
    the posterior variance (``eta`` ignored); ``"ddim"`` takes ``eta``.

    Returns:
      ``x0 (B, 8, 8, C)``; with ``return_chain`` a dict ``{"x0", "latents" (S + 1, B, ...),
      "means" (S, B, ...), "stds" (S,), "timesteps" (S,)}`` where ``latents[i + 1] =
      means[i] + stds[i] * z_i``.
    """
    if method not in ("ddim", "ddpm"):
        raise ValueError(f"method must be 'ddim' or 'ddpm', got {method!r}")
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ks = sampling_timesteps(schedule.num_timesteps, num_steps)
    ab_all = jnp.asarray(schedule.alpha_bars)
    ab = ab_all[ks]
    ab_prev = jnp.concatenate([ab_all[ks[1:]], jnp.ones((1,), jnp.float32)])
    t = jnp.asarray(ks, jnp.float32) / schedule.num_timesteps

    def body(x, xs):
        i, t_i, ab_i, ab_prev_i = xs
        pred = guided(model_fn, x, jnp.full((x.shape[0],), t_i), labels, guidance, null_label)
        if method == "ddpm":
            mean, std = ddpm_step_mean_std(x, pred, ab_i, ab_prev_i, prediction=prediction, clip_x0=clip_x0)
        else:
            mean, std = ddim_step_mean_std(
                x, pred, ab_i, ab_prev_i, eta=eta, prediction=prediction, clip_x0=clip_x0
            )
        z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        x_next = mean + std * z
        return x_next, (x_next, mean, std)

    x0, (latents, means, stds) = jax.lax.scan(
        body, noise, (jnp.arange(num_steps), t, ab, ab_prev), unroll=unroll
    )
    if not return_chain:
        return x0
    return {"x0": x0, "latents": jnp.concatenate([noise[None], latents]), "means": means, "stds": stds,
            "timesteps": jnp.asarray(ks)}


def ddim_invert(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x0: Array,
    labels: Array | None = None,
    *,
    num_steps: int = 50,
    guidance: float = 1.0,
    null_label: int | None = None,
    prediction: str = "epsilon",
    fixed_point_iters: int = 0,
    unroll: int | bool = DEFAULT_UNROLL,
) -> Array:
    """Run the DDIM ODE (``eta = 0``) forward from clean ``x0`` to ``x_{T-1}``.

    The reverse of :func:`diffusion_sample` with ``eta=0, clip_x0=False``: step
    ``i`` undoes sampling step ``S - 1 - i``. Sampling reads the noise estimate
    at the latent it starts from, which inversion has yet to find: with
    ``fixed_point_iters = 0`` it is read at the current latent (the usual
    first-order DDIM inversion, exact up to ``O(1 / S)`` per step); each extra
    iteration re-reads it at the latest estimate of the target latent, so
    the round trip becomes exact where that fixed-point iteration converges
    (it does when the model's noise estimate varies slowly with ``x``).
    """
    ks = sampling_timesteps(schedule.num_timesteps, num_steps)[::-1]
    ab_all = jnp.asarray(schedule.alpha_bars)
    ab_to = ab_all[ks]
    ab_from = jnp.concatenate([jnp.ones((1,), jnp.float32), ab_to[:-1]])
    t = jnp.asarray(ks, jnp.float32) / schedule.num_timesteps

    def body(x, xs):
        t_i, ab_from_i, ab_to_i = xs
        tb = jnp.full((x.shape[0],), t_i)

        def eps_at(y):  # the noise estimate sampling would read at latent y (level ab_to)
            return x0_and_eps(y, guided(model_fn, y, tb, labels, guidance, null_label), ab_to_i, prediction)[1]

        def move(eps):  # re-noise x's clean estimate to level ab_to with that noise
            x0_hat = (x - jnp.sqrt(1.0 - ab_from_i) * eps) / jnp.sqrt(ab_from_i)
            return jnp.sqrt(ab_to_i) * x0_hat + jnp.sqrt(1.0 - ab_to_i) * eps

        eps = eps_at(x)
        for _ in range(fixed_point_iters):
            eps = eps_at(move(eps))
        return move(eps), None

    x, _ = jax.lax.scan(body, x0, (t, ab_from, ab_to), unroll=unroll)
    return x


# --------------------------------------------------------------------------- #
# Flow matching: ODE and SDE from t = 1 (noise) to t = 0 (data)
# --------------------------------------------------------------------------- #
def flow_time_grid(num_steps: int) -> Array:
    """``(S + 1,)`` times ``1, 1 - 1/S, ..., 0``."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    return jnp.linspace(1.0, 0.0, num_steps + 1, dtype=jnp.float32)


def flow_ode_sample(
    model_fn: ModelFn,
    noise: Array,
    labels: Array | None = None,
    *,
    num_steps: int = 32,
    method: str = "euler",
    guidance: float = 1.0,
    null_label: int | None = None,
    unroll: int | bool = DEFAULT_UNROLL,
) -> Array:
    """Integrate ``dx/dt = v(x, t)`` from ``t = 1`` (``noise``) to ``t = 0`` (Euler or Heun)."""
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    ts = flow_time_grid(num_steps)
    b = noise.shape[0]

    def v(x, t):
        return guided(model_fn, x, jnp.full((b,), t), labels, guidance, null_label)

    def body(x, xs):
        t, s = xs
        dt = s - t
        v0 = v(x, t)
        x_euler = x + dt * v0
        if method == "euler":
            return x_euler, None
        return x + dt * 0.5 * (v0 + v(x_euler, s)), None

    x, _ = jax.lax.scan(body, noise, (ts[:-1], ts[1:]), unroll=unroll)
    return x


def flow_sde_sigma(t: Array, noise_level: float, t_cap: Array) -> Array:
    """Flow-GRPO's ``sigma_t = a sqrt(t / (1 - t))``, with ``1 - t`` read at ``min(t, t_cap)``.

    ``t_cap`` (the grid's second time) keeps the first step (``t = 1``) finite,
    as Flow-GRPO's implementation does.
    """
    return noise_level * jnp.sqrt(t / (1.0 - jnp.minimum(t, t_cap)))


def flow_sde_step_mean_std(
    x: Array, v: Array, t: Array, t_next: Array, *, noise_level: float, t_cap: Array
) -> tuple[Array, Array]:
    """One Euler-Maruyama step of the reverse SDE with the ODE's marginals (Liu et al., 2025, Flow-GRPO).

    With ``dt = t_next - t < 0`` and the score of the linear path
    ``grad log p_t(x) = -(x + (1 - t) v) / t``:
    ``mean = x + [v + sigma_t^2 / (2 t) (x + (1 - t) v)] dt``, ``std = sigma_t sqrt(-dt)``.
    """
    dt = t_next - t
    sigma = flow_sde_sigma(t, noise_level, t_cap)
    mean = x + (v + sigma**2 / (2.0 * t) * (x + (1.0 - t) * v)) * dt
    return mean, sigma * jnp.sqrt(-dt)


def flow_sde_sample(
    model_fn: ModelFn,
    noise: Array,
    key: Array,
    labels: Array | None = None,
    *,
    num_steps: int = 32,
    noise_level: float = 0.7,
    guidance: float = 1.0,
    null_label: int | None = None,
    unroll: int | bool = DEFAULT_UNROLL,
    return_chain: bool = False,
) -> Any:
    """Sample with :func:`flow_sde_step_mean_std` steps (noise ``normal(fold_in(key, i))`` at step ``i``).

    Returns ``x0`` or, with ``return_chain``, ``{"x0", "latents" (S + 1, ...), "means",
    "stds" (S,), "times" (S + 1,)}``. ``noise_level = 0`` is the Euler ODE sampler.
    """
    if not noise_level >= 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    ts = flow_time_grid(num_steps)
    t_cap = ts[1] if num_steps > 1 else jnp.float32(0.5)
    b = noise.shape[0]

    def body(x, xs):
        i, t, s = xs
        v = guided(model_fn, x, jnp.full((b,), t), labels, guidance, null_label)
        mean, std = flow_sde_step_mean_std(x, v, t, s, noise_level=noise_level, t_cap=t_cap)
        x_next = mean + std * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        return x_next, (x_next, mean, std)

    x0, (latents, means, stds) = jax.lax.scan(
        body, noise, (jnp.arange(num_steps), ts[:-1], ts[1:]), unroll=unroll
    )
    if not return_chain:
        return x0
    return {"x0": x0, "latents": jnp.concatenate([noise[None], latents]), "means": means, "stds": stds,
            "times": ts}


__all__ = [
    "DEFAULT_UNROLL",
    "ddim_invert",
    "ddim_step_mean_std",
    "ddpm_step_mean_std",
    "diffusion_sample",
    "flow_ode_sample",
    "flow_sde_sample",
    "flow_sde_sigma",
    "flow_sde_step_mean_std",
    "flow_time_grid",
    "guided",
    "x0_and_eps",
]
