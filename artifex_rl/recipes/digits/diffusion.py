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


def _run(args: Namespace, kind: str, settings: DenoiserRunSettings) -> dict[str, Any]:
    start = time.perf_counter()
    unconditional = bool(getattr(args, "unconditional", False))
    steps = args.steps if getattr(args, "steps", None) else settings.steps
    log_every = getattr(args, "log_every", None) or min(settings.log_every, steps)
    model = DenoiserUNet(channels=settings.channels, num_classes=None if unconditional else 10, rngs=nnx.Rngs(args.seed))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, settings.learning_rate, min(settings.warmup_steps, max(steps // 2, 1)), max(steps, 2)
    )
    common = dict(
        seed=args.seed, log_every_n_steps=log_every, ema_decay=settings.ema_decay,
        cond_drop_prob=0.0 if unconditional else settings.cond_drop_prob,
    )
    if kind == "diffusion":
        trainer: DiffusionTrainer | FlowTrainer = DiffusionTrainer(model, optax.adam(schedule), DiffusionConfig(**common))
    else:
        trainer = FlowTrainer(model, optax.adam(schedule), FlowConfig(**common))
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
    return _run(args, "diffusion", DIFFUSION)


def run_flow(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train digits-flow``: rectified flow + Euler sampling with guidance."""
    return _run(args, "flow", FLOW)
