"""Pre-training of the recipes' policy, cached in the run directory with the settings that made it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import optax

from artifex_rl.autoregressive import AutoregressiveTrainer
from artifex_rl.config import TrainerConfig
from artifex_rl.models.transformer import TransformerLM
from artifex_rl.recipes.lm.settings import LMSettings, Task, build_model

_log = logging.getLogger(__name__)


def _pretrain_fingerprint(task: Task, settings: LMSettings, seed: int) -> dict[str, Any]:
    return {
        "task": settings.task,
        "task_fields": {k: v for k, v in dataclasses.asdict(task).items() if k != "tokenizer"},
        "model": dataclasses.asdict(settings.model),
        "pretrain": dataclasses.asdict(settings.pretrain),
        "seed": seed,
    }


def pretrain(
    task: Task, settings: LMSettings, seed: int, cache_dir: str | None = None
) -> tuple[TransformerLM, dict[str, Any]]:
    """The pre-trained policy, loaded from ``cache_dir`` when it holds one with the same settings.

    Args:
      task: the task whose demonstrations are imitated.
      settings: model and pre-training settings.
      seed: model init and demonstration sampling.
      cache_dir: ``<run_dir>/pretrained``; ``None``: no caching.

    Returns:
      ``(model, info)`` with ``info``: ``pretrain_cached``, ``pretrain_seconds``
      and (when trained now) ``pretrain_loss`` / ``pretrain_token_accuracy``.
    """
    fingerprint = _pretrain_fingerprint(task, settings, seed)
    checkpoint = settings_path = None
    if cache_dir is not None:
        checkpoint = os.path.join(cache_dir, "checkpoint")
        settings_path = os.path.join(cache_dir, "settings.json")
        cached = _read_json(settings_path)
        if cached == fingerprint and os.path.isdir(checkpoint):
            from artifex_rl.checkpointing import is_complete_checkpoint, load_model

            if is_complete_checkpoint(checkpoint):
                start = time.perf_counter()
                model = load_model(checkpoint, lambda: build_model(task, settings.model, seed))
                return model, {"pretrain_cached": True, "pretrain_seconds": time.perf_counter() - start}
        if cached is not None:
            _log.warning("pre-trained policy in %s has other settings; pre-training again", cache_dir)

    start = time.perf_counter()
    p = settings.pretrain
    model = build_model(task, settings.model, seed)
    trainer = AutoregressiveTrainer(
        model, optax.adam(p.learning_rate), TrainerConfig(log_every_n_steps=max(1, p.steps // 4), seed=seed)
    )
    # Every step sees fresh demonstrations: generated in one compiled call, sliced on the host.
    demos = task.demonstrations(jax.random.key(seed), p.steps * p.batch_size, noise=p.noise)
    tokens = np.asarray(demos.tokens).reshape(p.steps, p.batch_size, -1)
    loss_mask = np.asarray(demos.loss_mask).reshape(p.steps, p.batch_size, -1)
    loader = [{"tokens": tokens[i], "loss_mask": loss_mask[i]} for i in range(p.steps)]
    trainer.fit(loader, max_steps=p.steps)
    info: dict[str, Any] = {
        "pretrain_cached": False,
        "pretrain_seconds": time.perf_counter() - start,
        "pretrain_loss": trainer.callback_metrics.get("loss"),
        "pretrain_token_accuracy": trainer.callback_metrics.get("token_accuracy"),
    }
    if cache_dir is not None:
        from artifex_rl.checkpointing import save_trainer_checkpoint

        os.makedirs(cache_dir, exist_ok=True)
        save_trainer_checkpoint(trainer, checkpoint, overwrite=True)
        # The settings file is written last: a cache without it is never trusted.
        with open(settings_path + ".tmp", "w") as f:
            json.dump(fingerprint, f, indent=2, sort_keys=True)
        os.replace(settings_path + ".tmp", settings_path)
    return model, info


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
