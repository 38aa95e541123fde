"""Training runs executed in separate processes by ``tests/test_checkpointing.py``.

``python -m tests._resume_script run --ckpt-dir D --run-dir R --max-steps N [--resume] --out F``
trains the tiny regression model with a ModelCheckpoint + EarlyStopping +
MetricsLogger and writes the final state and callback states to ``F`` (npz).

``run-gan`` / ``run-ebm`` (same options): a tiny GAN (two optimizers) / energy model
(replay buffer) on digits, for ``tests/test_gan.py`` and ``tests/test_energy.py``.

``run-ppo`` (same options) does the same for PPO on CartPole fed by a gymnax
rollout source fused into the compiled step (``steps_per_execution=2``).

``python -m tests._resume_script crash-writer --ckpt-dir D`` trains and
checkpoints every 2 steps until it is killed.

``python -m tests._resume_script load-model --ckpt PATH --out F [--exit-save P]``
restores the parameters into a freshly built model (no trainer) and writes
them to ``F``; with ``--exit-save`` it then starts an async checkpoint save to
``P`` and exits at once, without waiting for it (the process must finish it).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np
from flax import nnx

from artifex_rl.callbacks import CheckpointConfig, EarlyStopping, MetricsLogger, ModelCheckpoint
from tests._models import TinyMLP, make_regression_trainer, regression_batches

LOG_EVERY = 5
SAVE_EVERY = 10


def flat_state(tree) -> dict[str, np.ndarray]:
    """``{"params/l1/kernel": array}`` of a pytree, for np.savez and comparisons."""
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path): np.asarray(
            leaf
        )
        for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    }


def resume_callbacks(ckpt_dir: str, run_dir: str) -> list:
    return [
        MetricsLogger(run_dir, plot=False, parameter_overview=False, write_csv=False),
        # min_delta large enough that the wait counter moves (its state must survive the resume).
        EarlyStopping(monitor="loss", mode="min", patience=50, min_delta=0.05),
        ModelCheckpoint(
            CheckpointConfig(
                ckpt_dir,
                monitor="loss",
                mode="min",
                save_top_k=2,
                every_n_train_steps=SAVE_EVERY,
                async_save=True,
            )
        ),
    ]


class _SigintAt:
    """Sends this process SIGINT once, right after optimisation step ``step`` (Ctrl-C mid-epoch)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, metrics, step):
        import os
        import signal

        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def run_interrupted(ckpt_dir: str, run_dir: str, max_steps: int, resume: bool) -> dict:
    """``run`` with a SIGINT after step 17 (mid-epoch, not a checkpoint step): fit must stop
    there, save, and raise TrainingInterrupted."""
    from artifex_rl.callbacks import Callback
    from artifex_rl.loop.fit_loop import TrainingInterrupted

    interrupter = type("SigintAt", (_SigintAt, Callback), {})(17)
    trainer = make_regression_trainer(log_every_n_steps=LOG_EVERY)
    callbacks = resume_callbacks(ckpt_dir, run_dir)
    try:
        trainer.fit(regression_batches(8), max_steps=max_steps, callbacks=[*callbacks, interrupter])
    except TrainingInterrupted as err:
        print(f"interrupted at {err.step}", flush=True)
    return {"state": flat_state(trainer.train_state), "global_step": trainer.global_step}


def run(ckpt_dir: str, run_dir: str, max_steps: int, resume: bool) -> dict:
    """Train to ``max_steps`` (resuming from ``ckpt_dir``'s last checkpoint if asked); return the outcome."""
    trainer = make_regression_trainer(log_every_n_steps=LOG_EVERY)
    callbacks = resume_callbacks(ckpt_dir, run_dir)
    trainer.fit(
        regression_batches(8),
        max_steps=max_steps,
        max_epochs=None,
        callbacks=callbacks,
        ckpt_path="last" if resume else None,
    )
    logger, stopper, checkpoint = callbacks
    return {
        "state": flat_state(trainer.train_state),
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "early_stopping": stopper.state_dict(),
        "checkpoint": checkpoint.state_dict(),
        "rows": logger.rows(),
    }


def run_ppo(ckpt_dir: str, run_dir: str, max_steps: int, resume: bool) -> dict:
    """PPO on CartPole from a gymnax rollout source, 2 iterations per compiled call (fused
    collect + update), checkpointed every 4 steps; the outcome includes the source's state."""
    import optax

    from artifex_rl.envs import GymnaxRolloutSource
    from artifex_rl.models import ActorCritic
    from artifex_rl.rl import PPOConfig, PPOTrainer

    model = ActorCritic(4, 2, hidden=(16, 16), rngs=nnx.Rngs(0))
    config = PPOConfig(update_epochs=2, num_minibatches=2, log_every_n_steps=2, steps_per_execution=2)
    trainer = PPOTrainer(model, optax.adam(1e-3), config)
    source = GymnaxRolloutSource("CartPole-v1", trainer, num_envs=4, num_steps=16, seed=1)
    logger = MetricsLogger(run_dir, plot=False, parameter_overview=False, write_csv=False)
    checkpoint = ModelCheckpoint(
        CheckpointConfig(ckpt_dir, monitor="episode_return", mode="max", save_top_k=1,
                         every_n_train_steps=4, async_save=True)
    )
    trainer.fit(source, max_steps=max_steps, max_epochs=None, callbacks=[logger, checkpoint],
                ckpt_path="last" if resume else None)
    state = {**flat_state(trainer.train_state), **{f"source/{k}": v for k, v in flat_state(source.state_dict()).items()}}
    return {
        "state": state,
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "checkpoint": checkpoint.state_dict(),
        "rows": logger.rows(),
    }


def run_two(ckpt_dir: str, run_dir: str, max_steps: int, resume: bool) -> dict:
    """The two-model toy trainer (two optimizers, an EMA in the extra state), checkpointed every 4 steps."""
    from tests._models import make_two_model_trainer

    trainer = make_two_model_trainer(log_every_n_steps=2)
    logger = MetricsLogger(run_dir, plot=False, parameter_overview=False, write_csv=False)
    checkpoint = ModelCheckpoint(CheckpointConfig(ckpt_dir, save_top_k=1, every_n_train_steps=4))
    trainer.fit(regression_batches(6), max_steps=max_steps, callbacks=[logger, checkpoint],
                ckpt_path="last" if resume else None)
    return {
        "state": flat_state(trainer.train_state),
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "checkpoint": checkpoint.state_dict(),
        "rows": logger.rows(),
    }


def _digits_fit(trainer, ckpt_dir: str, run_dir: str, max_steps: int, resume: bool) -> dict:
    """Fit ``trainer`` on 96 digits in batches of 16 (a resume lands mid-epoch), checkpointed every 4 steps."""
    from artifex_rl.data import ArrayDataLoader, load_digits_split

    loader = ArrayDataLoader({"images": load_digits_split().train_images[:96]}, 16, seed=3)
    logger = MetricsLogger(run_dir, plot=False, parameter_overview=False, write_csv=False)
    checkpoint = ModelCheckpoint(CheckpointConfig(ckpt_dir, save_top_k=1, every_n_train_steps=4))
    trainer.fit(loader, max_steps=max_steps, max_epochs=None, callbacks=[logger, checkpoint],
                ckpt_path="last" if resume else None)
    return {"state": flat_state(trainer.train_state), "global_step": trainer.global_step,
            "current_epoch": trainer.current_epoch, "rows": logger.rows()}


def run_gan(ckpt_dir: str, run_dir: str, max_steps: int, resume: bool) -> dict:
    """A tiny WGAN-GP (critic twice per step; Adam for G, RMSProp for D) on digits."""
    import optax

    from artifex_rl.generative.gan import GANConfig, GANTrainer
    from artifex_rl.models import Discriminator, Generator

    models = {"generator": Generator(8, width=4, rngs=nnx.Rngs(0)),
              "discriminator": Discriminator(width=4, rngs=nnx.Rngs(1))}
    optimizers = {"generator": optax.adam(1e-3, b1=0.5), "discriminator": optax.rmsprop(1e-3)}
    trainer = GANTrainer(models, optimizers, GANConfig(loss_type="wgan_gp", n_critic=2, latent_dim=8,
                                                       log_every_n_steps=2))
    return _digits_fit(trainer, ckpt_dir, run_dir, max_steps, resume)


def run_ebm(ckpt_dir: str, run_dir: str, max_steps: int, resume: bool) -> dict:
    """A tiny energy MLP with a 64-chain replay buffer (3 Langevin steps) on digits."""
    import optax

    from artifex_rl.generative.energy import EnergyConfig, EnergyTrainer
    from artifex_rl.models import EnergyMLP

    config = EnergyConfig(langevin_steps=3, buffer_size=64, grad_norm_weight=0.1, log_every_n_steps=2)
    trainer = EnergyTrainer(EnergyMLP(hidden=(16,), rngs=nnx.Rngs(0)), optax.adam(1e-3), config)
    return _digits_fit(trainer, ckpt_dir, run_dir, max_steps, resume)


def run_diffusion(ckpt_dir: str, run_dir: str, max_steps: int, resume: bool) -> dict:
    """DiffusionTrainer (tiny MLP denoiser, EMA in the extra state, loader position), checkpointed every 4 steps."""
    import optax

    from artifex_rl.data import ArrayDataLoader
    from artifex_rl.generative.diffusion import DiffusionConfig, DiffusionTrainer
    from tests._denoisers import TinyDenoiser, digit_batches

    trainer = DiffusionTrainer(TinyDenoiser(rngs=nnx.Rngs(0)), optax.adam(1e-2),
                               DiffusionConfig(num_timesteps=50, ema_decay=0.9, log_every_n_steps=2))
    loader = ArrayDataLoader(digit_batches(1, batch_size=40)[0], 16, seed=3)
    checkpoint = ModelCheckpoint(CheckpointConfig(ckpt_dir, save_top_k=1, every_n_train_steps=4))
    trainer.fit(loader, max_steps=max_steps, callbacks=[checkpoint], ckpt_path="last" if resume else None)
    return {"state": flat_state(trainer.train_state), "global_step": trainer.global_step,
            "current_epoch": trainer.current_epoch}


def save_outcome(outcome: dict, path: str) -> None:
    meta = {k: v for k, v in outcome.items() if k != "state"}
    np.savez(path, __meta__=json.dumps(meta), **outcome["state"])


def load_outcome(path: str) -> dict:
    with np.load(path) as data:
        meta = json.loads(str(data["__meta__"]))
        meta["state"] = {k: data[k] for k in data.files if k != "__meta__"}
    return meta


def crash_writer(ckpt_dir: str) -> None:
    """Train forever, checkpointing every 2 steps (all kept), until killed."""
    trainer = make_regression_trainer(log_every_n_steps=2)
    checkpoint = ModelCheckpoint(
        CheckpointConfig(ckpt_dir, save_top_k=-1, every_n_train_steps=2, async_save=True)
    )
    print("started", flush=True)
    trainer.fit(regression_batches(8), max_steps=10**9, max_epochs=None, callbacks=[checkpoint])


def load_model_main(ckpt: str, out: str, exit_save: str | None) -> None:
    from artifex_rl.checkpointing import TrainerCheckpointer, load_model

    model = load_model(ckpt, lambda: TinyMLP(rngs=nnx.Rngs(123)))
    np.savez(out, **flat_state(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    if exit_save:
        trainer = make_regression_trainer()
        TrainerCheckpointer(async_save=True).save(trainer, exit_save)  # no wait, no close


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["run", "run-ppo", "run-two", "run-gan", "run-ebm", "run-interrupted", "run-diffusion", "crash-writer", "load-model"])
    parser.add_argument("--ckpt-dir")
    parser.add_argument("--run-dir")
    parser.add_argument("--ckpt")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--exit-save")
    args = parser.parse_args(argv)
    if args.command in ("run", "run-ppo", "run-two", "run-gan", "run-ebm", "run-interrupted", "run-diffusion"):
        fn = {"run": run, "run-ppo": run_ppo, "run-two": run_two, "run-gan": run_gan, "run-ebm": run_ebm,
              "run-interrupted": run_interrupted, "run-diffusion": run_diffusion}[args.command]
        save_outcome(fn(args.ckpt_dir, args.run_dir, args.max_steps, args.resume), args.out)
    elif args.command == "crash-writer":
        crash_writer(args.ckpt_dir)
    else:
        load_model_main(args.ckpt, args.out, args.exit_save)


if __name__ == "__main__":
    main(sys.argv[1:])
