"""Recipes ``digits-diffusion`` and ``digits-flow``: a denoising U-Net on the UCI digits.

Both train :class:`~artifex_rl.models.DenoiserUNet` (channels (32, 64)) with
Adam (linear warm-up, cosine decay), batch 128, an EMA of the parameters
(decay 0.995) and, by default, class-conditional with label dropout 0.1 for
classifier-free guidance (``--unconditional``: no labels). After ``fit`` the
EMA model draws 500 samples (50 per class, or 500 unconditional) which
:func:`~artifex_rl.recipes.digits.common.evaluate_and_summarise` scores and
writes (``samples.png``/``.npz``, ``summary.json``). Checkpoints go to
``<run_dir>/checkpoints``; running the recipe again on the same run dir
resumes from the last one (EMA, optimizer, loader position included).

* diffusion: DDPM epsilon-prediction, cosine schedule, T = 1000; sampled with
  DDIM (eta 0, 50 steps), guidance 2.
* flow: rectified flow (linear path, noise at t = 1); Euler, 32 steps, guidance 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import time
from argparse import Namespace
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from artifex_rl.data import ArrayDataLoader, load_digits_split
from artifex_rl.generative.diffusion import DiffusionConfig, DiffusionTrainer
from artifex_rl.generative.flow import FlowConfig, FlowTrainer
from artifex_rl.models.unet import DenoiserUNet
from artifex_rl.recipes.common import standard_callbacks
from artifex_rl.recipes.digits.common import NUM_SAMPLES, evaluate_and_summarise


@dataclasses.dataclass(frozen=True)
class DenoiserRunSettings:
    """What defines a digits denoiser run besides the trainer's config."""

    steps: int
    sampler: dict[str, Any]
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    channels: tuple[int, int] = (32, 64)
    ema_decay: float = 0.995
    cond_drop_prob: float = 0.1
    log_every: int = 50


DIFFUSION = DenoiserRunSettings(steps=1200, sampler={"method": "ddim", "num_steps": 50, "eta": 0.0, "guidance": 2.0})
FLOW = DenoiserRunSettings(steps=800, sampler={"method": "euler", "num_steps": 32, "guidance": 2.0})


def build_denoiser_trainer(
    kind: str, *, seed: int, unconditional: bool, steps: int, settings: DenoiserRunSettings | None = None,
    log_every: int | None = None,
) -> DiffusionTrainer | FlowTrainer:
    """The recipe's model and trainer (``kind``: ``"diffusion"`` or ``"flow"``), untrained."""
    settings = settings or (DIFFUSION if kind == "diffusion" else FLOW)
    log_every = log_every or min(settings.log_every, steps)
    model = DenoiserUNet(channels=settings.channels, num_classes=None if unconditional else 10, rngs=nnx.Rngs(seed))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, settings.learning_rate, min(settings.warmup_steps, max(steps // 2, 1)), max(steps, 2)
    )
    common = dict(
        seed=seed, log_every_n_steps=log_every, ema_decay=settings.ema_decay,
        cond_drop_prob=0.0 if unconditional else settings.cond_drop_prob,
    )
    if kind == "diffusion":
        return DiffusionTrainer(model, optax.adam(schedule), DiffusionConfig(**common))
    return FlowTrainer(model, optax.adam(schedule), FlowConfig(**common))


def load_denoiser_run(run_dir: str) -> DiffusionTrainer | FlowTrainer:
    """The trainer of a finished ``digits-diffusion``/``digits-flow`` run, restored from its last checkpoint.

    Raises:
      FileNotFoundError: ``run_dir`` has no ``config.json`` or no complete checkpoint.
    """
    from artifex_rl.callbacks.checkpoint import CheckpointConfig, ModelCheckpoint
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{run_dir} is not a digits-diffusion/digits-flow run: no config.json")
    with open(config_path) as f:
        config = json.load(f)
    recipe, run = config.get("recipe"), config.get("run", {})
    if recipe not in ("digits-diffusion", "digits-flow"):
        raise FileNotFoundError(f"{run_dir} holds a {recipe!r} run, expected digits-diffusion or digits-flow")
    kind = recipe.split("-")[1]
    defaults = DIFFUSION if kind == "diffusion" else FLOW
    # The run's own settings (its channels above all), as its config.json recorded them.
    fields = {f.name for f in dataclasses.fields(DenoiserRunSettings)}
    settings = dataclasses.replace(defaults, **{k: (tuple(v) if k == "channels" else v)
                                                for k, v in run.items() if k in fields})
    trainer = build_denoiser_trainer(
        kind, seed=int(config.get("seed") or 0), unconditional=bool(run.get("unconditional")), steps=int(run["steps"]),
        settings=settings,
    )
    last = ModelCheckpoint(CheckpointConfig(dirpath=os.path.join(run_dir, "checkpoints"))).resolve_checkpoint_path("last")
    if last is None:
        raise FileNotFoundError(f"{run_dir}/checkpoints holds no complete checkpoint")
    trainer.load_checkpoint(last)
    return trainer


def run_denoiser_recipe(args: Namespace, kind: str, settings: DenoiserRunSettings) -> dict[str, Any]:
    start = time.perf_counter()
    unconditional = bool(getattr(args, "unconditional", False))
    steps = args.steps if getattr(args, "steps", None) else settings.steps
    trainer = build_denoiser_trainer(kind, seed=args.seed, unconditional=unconditional, steps=steps, settings=settings,
                                     log_every=getattr(args, "log_every", None))
    loader = ArrayDataLoader(load_digits_split().train(), settings.batch_size, seed=args.seed)
    run_config = {"recipe": args.recipe, "unconditional": unconditional, "steps": steps,
                  **dataclasses.asdict(settings), **trainer.config.to_dict()}
    callbacks = standard_callbacks(args, run_config=run_config, checkpoint_every=max(steps // 4, 1))
    steps_before = trainer.global_step
    fit_start = time.perf_counter()
    trainer.fit(loader, max_steps=steps, callbacks=callbacks, ckpt_path="last")
    jax.block_until_ready(trainer.train_state)
    train_seconds = time.perf_counter() - fit_start

    sample_start = time.perf_counter()
    per_class = NUM_SAMPLES // 10
    labels = None if unconditional else np.repeat(np.arange(10, dtype=np.int32), per_class)
    request = np.full((NUM_SAMPLES,), 0, np.int32) if labels is None else labels
    sampler = dict(settings.sampler)
    if unconditional:
        sampler["guidance"] = 1.0
    images = np.asarray(trainer.sample(jax.random.key(args.seed + 1), request, **sampler))
    sample_seconds = time.perf_counter() - sample_start
    extra = {
        "recipe": args.recipe, "steps": trainer.global_step, "steps_this_run": trainer.global_step - steps_before,
        "train_seconds": train_seconds, "sample_seconds": sample_seconds, "sampler": sampler,
        "unconditional": unconditional, "final_loss": trainer.callback_metrics.get("loss"),
        # The machine is shared: the process's own CPU time is the load-independent cost.
        "cpu_seconds": _cpu_seconds(), "load_average_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(),
    }
    return evaluate_and_summarise(args.run_dir, images, labels, wall_seconds=time.perf_counter() - start, extra=extra)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)


def run_diffusion(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train digits-diffusion``: DDPM (epsilon, cosine) + DDIM sampling with guidance."""
    return run_denoiser_recipe(args, "diffusion", DIFFUSION)


def run_flow(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train digits-flow``: rectified flow + Euler sampling with guidance."""
    return run_denoiser_recipe(args, "flow", FLOW)
