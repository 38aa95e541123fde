"""A new algorithm is one subclass with one ``compute_loss``: here, a regression trainer.

Run: ``python examples/custom_trainer.py``. It fits a small MLP to a noisy
sin(2x) with ``Trainer.fit`` and prints the loss before and after.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl import Trainer, TrainerConfig


class MLP(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(1, 64, rngs=rngs)
        self.out = nnx.Linear(64, 1, rngs=rngs)

    def __call__(self, x):  # (B, 1) -> (B, 1)
        return self.out(jnp.tanh(self.hidden(x)))


class RegressionTrainer(Trainer):
    """Mean squared error; runs inside the compiled, donated train step."""

    def compute_loss(self, model, batch, rng):
        error = model(batch["x"]) - batch["y"]
        return jnp.mean(error**2), {"max_abs_error": jnp.max(jnp.abs(error))}


def sine_batches(n_batches=32, batch_size=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, size=(n_batches, batch_size, 1)).astype(np.float32)
    y = np.sin(2 * x) + 0.05 * rng.normal(size=x.shape).astype(np.float32)
    return [{"x": xb, "y": yb} for xb, yb in zip(x, y, strict=True)]


def main(max_epochs: int = 30) -> tuple[float, float]:
    model = MLP(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    trainer = RegressionTrainer(model, optimizer, TrainerConfig(log_every_n_steps=32))
    data = sine_batches()
    before = float(jax.device_get(trainer.train_step(data[0])["loss"]))
    trainer.fit(data, max_epochs=max_epochs)
    after = trainer.callback_metrics["loss"]
    print(f"loss: {before:.4f} -> {after:.4f} after {trainer.global_step} steps")
    return before, after


if __name__ == "__main__":
    main()
