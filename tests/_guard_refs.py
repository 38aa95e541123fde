"""Tiny models and float64 numpy references for the behaviour-guard tests.

The guard tests (``test_guards_*.py``) check the trainers through their
public behaviour only: ``train_step``/``train_steps``/``fit``, the metrics
they return, ``trainer.model`` and the configs. The references here are
written from the formulas in the trainers' docstrings (and the papers), not
from the implementation: explicit gradients of linear policies, so a whole
update (and a sequence of updates) can be replayed in numpy.

The one place that reads trainer parameters is :func:`params_of`; it goes
through ``trainer.model`` (documented to hold the latest parameters), so a
change in how the trainer stores its state needs no change here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- #
# Reading the trainer's parameters (the one adapter to the trainer's state)
# --------------------------------------------------------------------------- #


def params_of(trainer) -> dict[str, np.ndarray]:
    """The trainer's current parameters as ``{"path/to/leaf": float64 array}``.

    Read through ``trainer.model`` (public); adapt here if that ever changes.
    """
    pure = nnx.to_pure_dict(nnx.state(trainer.model, nnx.Param))
    flat, _ = jax.tree_util.tree_flatten_with_path(pure)
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): np.array(leaf, np.float64) for path, leaf in flat
    }


def assert_params_close(actual: dict, expected: dict, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert actual.keys() == expected.keys(), (sorted(actual), sorted(expected))
    for key in actual:
        np.testing.assert_allclose(actual[key], expected[key], rtol=rtol, atol=atol, err_msg=key)


def params_differ(a: dict, b: dict, tol: float = 1e-6) -> bool:
    return any(np.max(np.abs(a[k] - b[k])) > tol for k in a)


# --------------------------------------------------------------------------- #
# Tiny models: every parameter is a Linear layer (or a plain vector), so the
# numpy references below can differentiate them by hand.
# --------------------------------------------------------------------------- #


class LinearPolicy(nnx.Module):
    """``obs (N, D) -> logits (N, A)``."""

    def __init__(self, obs_dim: int, n_actions: int, *, rngs: nnx.Rngs):
        self.pi = nnx.Linear(obs_dim, n_actions, rngs=rngs)

    def __call__(self, obs):
        return self.pi(obs)


class LinearActorCritic(nnx.Module):
    """``obs (N, D) -> (logits (N, A), value (N,))``."""

    def __init__(self, obs_dim: int, n_actions: int, *, rngs: nnx.Rngs):
        self.pi = nnx.Linear(obs_dim, n_actions, rngs=rngs)
        self.v = nnx.Linear(obs_dim, 1, rngs=rngs)

    def __call__(self, obs):
        return self.pi(obs), self.v(obs)[:, 0]


class GaussianPolicyNet(nnx.Module):
    """``obs (N, D) -> (mean (N, K), log_std (K,))``: a state-independent scale."""

    def __init__(self, obs_dim: int, act_dim: int, *, rngs: nnx.Rngs):
        self.pi = nnx.Linear(obs_dim, act_dim, rngs=rngs)
        self.log_std = nnx.Param(jnp.linspace(-0.4, 0.3, act_dim))

    def __call__(self, obs):
        return self.pi(obs), self.log_std[...]


class GaussianActorCritic(nnx.Module):
    """``obs (N, D) -> ((mean (N, K), log_std (K,)), value (N,))``."""

    def __init__(self, obs_dim: int, act_dim: int, *, rngs: nnx.Rngs):
        self.pi = nnx.Linear(obs_dim, act_dim, rngs=rngs)
        self.log_std = nnx.Param(jnp.linspace(-0.4, 0.3, act_dim))
        self.v = nnx.Linear(obs_dim, 1, rngs=rngs)

    def __call__(self, obs):
        return (self.pi(obs), self.log_std[...]), self.v(obs)[:, 0]


class CurrentTokenLM(nnx.Module):
    """``tokens (B, L) -> logits (B, L, V)``; position ``i`` sees only token ``i`` (causal)."""

    def __init__(self, vocab: int, dim: int = 8, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.out = nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, tokens):
        return self.out(jnp.tanh(self.embed(tokens)))


def layer(params: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(kernel (in, out), bias (out,))`` of Linear ``name`` from :func:`params_of`'s dict."""
    return params[f"{name}/kernel"], params[f"{name}/bias"]


# --------------------------------------------------------------------------- #
# Distributions and the losses' pieces (float64)
# --------------------------------------------------------------------------- #


def log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def take(logp, actions):
    return np.take_along_axis(logp, np.asarray(actions)[..., None], axis=-1)[..., 0]


def categorical_entropy(logp):
    return -(np.exp(logp) * logp).sum(axis=-1)


def d_entropy_d_logits(logp):
    """``dH/dz = -p (log p + H)`` for ``H`` the entropy of ``softmax(z)``."""
    p = np.exp(logp)
    return -p * (logp + categorical_entropy(logp)[..., None])


def d_logp_d_logits(logp, actions):
    """``d log p(a) / dz = onehot(a) - p``."""
    onehot = np.eye(logp.shape[-1])[np.asarray(actions)]
    return onehot - np.exp(logp)


def standardize(x):
    """``(x - mean) / (std + 1e-8)``, population std; exactly 0 when ``x`` is constant."""
    x = np.asarray(x, np.float64)
    if x.max() == x.min():
        return np.zeros_like(x)
    return (x - x.mean()) / (x.std() + 1e-8)


def group_advantages(rewards, group_size, eps=1e-4):
    """GRPO's ``(r - mean_g) / (std_g + eps)`` per group of consecutive samples; 0 for equal groups."""
    rewards = np.asarray(rewards, np.float64)
    out = np.zeros_like(rewards)
    for start in range(0, len(rewards), group_size):
        g = rewards[start : start + group_size]
        if g.max() != g.min():
            out[start : start + group_size] = (g - g.mean()) / (g.std() + eps)
    return out


def clipped_surrogate(logp, old, adv, eps):
    """PPO/GRPO ``-min(r A, clip(r, 1-eps, 1+eps) A)`` per element, and its derivative in ``logp``.

    The derivative is ``-r A`` where the unclipped term is the minimum (or the
    ratio is inside the trust region, where both terms agree), else 0.
    """
    ratio = np.exp(np.asarray(logp, np.float64) - old)
    unclipped, clipped = ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv
    active = (np.abs(ratio - 1) <= eps) | (unclipped <= clipped)
    return -np.minimum(unclipped, clipped), np.where(active, -ratio * adv, 0.0)


def ratio_diagnostics(logp, old, eps):
    """``(approx_kl, clip_fraction)``: mean of ``(r - 1) - log r`` and of ``|r - 1| > eps``."""
    log_ratio = np.asarray(logp, np.float64) - old
    return float(np.mean(np.expm1(log_ratio) - log_ratio)), float(np.mean(np.abs(np.exp(log_ratio) - 1) > eps))


def gaussian_log_prob(mean, log_std, actions):
    """Diagonal Gaussian log-density summed over the last axis, and its derivatives
    in ``mean`` (per element) and ``log_std`` (per element, before broadcasting)."""
    z = (actions - mean) * np.exp(-log_std)
    logp = np.sum(-0.5 * z**2 - log_std - 0.5 * LOG_2PI, axis=-1)
    return logp, z * np.exp(-log_std), z**2 - 1.0


def gaussian_entropy(log_std):
    return float(np.sum(log_std + 0.5 * (1.0 + LOG_2PI)))


def discounted_returns(rewards, dones, gamma):
    """``G_t = sum_k gamma^(k-t) r_k`` up to and including the episode's end (forward sums)."""
    rewards, dones = np.asarray(rewards, np.float64), np.asarray(dones)
    out = np.zeros_like(rewards)
    for t in range(len(rewards)):
        total, discount = 0.0, 1.0
        for k in range(t, len(rewards)):
            total += discount * rewards[k]
            if dones[k]:
                break
            discount *= gamma
        out[t] = total
    return out


def to_float(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def close(actual, expected, rtol=2e-5, atol=2e-6, what=""):
    np.testing.assert_allclose(float(actual), float(expected), rtol=rtol, atol=atol, err_msg=what)
