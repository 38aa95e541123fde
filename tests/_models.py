"""Small models and trainers shared by the tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl import Trainer


class TinyMLP(nnx.Module):
    """``(B, in_dim) -> (B, out_dim)`` two-layer ReLU MLP."""

    def __init__(self, in_dim: int = 4, hidden: int = 16, out_dim: int = 1, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(in_dim, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, out_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(jax.nn.relu(self.l1(x)))


class RegressionTrainer(Trainer):
    """Mean-squared error on ``batch["x"] -> batch["y"]``."""

    def compute_loss(self, model, batch, rng):
        err = model(batch["x"]) - batch["y"]
        return jnp.mean(err**2), {"mae": jnp.mean(jnp.abs(err))}


def regression_batches(n_batches: int = 8, batch_size: int = 16, in_dim: int = 4, seed: int = 0):
    """A list of ``{"x": (B, in_dim), "y": (B, 1)}`` float32 numpy batches of a linear target."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(in_dim, 1)).astype(np.float32)
    out = []
    for _ in range(n_batches):
        x = rng.normal(size=(batch_size, in_dim)).astype(np.float32)
        out.append({"x": x, "y": x @ w})
    return out


def make_regression_trainer(seed: int = 0, lr: float = 1e-2, **config_kwargs) -> RegressionTrainer:
    from artifex_rl import TrainerConfig

    model = TinyMLP(rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
    return RegressionTrainer(model, optimizer, TrainerConfig(**config_kwargs))


class TwoModelTrainer(Trainer):
    """A toy trainer of two models with their own optimizers and an EMA (no core code names it).

    Phase "critic" (twice per batch) fits ``critic(x) -> y``; phase "actor" fits
    ``actor(x) -> critic(x)`` with the critic held fixed. ``extra`` keeps an
    exponential moving average of the actor's parameters.
    """

    ema_decay = 0.9

    def update_phases(self):
        from artifex_rl import UpdatePhase

        return (UpdatePhase("critic", ("critic",), repeats=2), UpdatePhase("actor", ("actor",)))

    def compute_loss(self, models, batch, rng, phase):
        target = batch["y"] if phase == "critic" else jax.lax.stop_gradient(models["critic"](batch["x"]))
        out = models[phase](batch["x"])
        return jnp.mean((out - target) ** 2), {f"{phase}_mae": jnp.mean(jnp.abs(out - target))}

    def init_extra_state(self):
        return {"actor_ema": jax.tree.map(jnp.array, self.train_state["params"]["actor"])}

    def after_update(self, extra, params, model_state):
        d = self.ema_decay
        return {"actor_ema": jax.tree.map(lambda e, p: d * e + (1 - d) * p, extra["actor_ema"], params["actor"])}


def make_two_model_trainer(seed: int = 0, **config_kwargs) -> TwoModelTrainer:
    from artifex_rl import TrainerConfig

    models = {"actor": TinyMLP(rngs=nnx.Rngs(seed)), "critic": TinyMLP(rngs=nnx.Rngs(seed + 1))}
    optimizers = {"actor": optax.adam(1e-2), "critic": optax.sgd(0.05, momentum=0.9)}
    return TwoModelTrainer(models, optimizers, TrainerConfig(**config_kwargs))
