"""What every recipe's run directory holds, and the callbacks that write it.

``<run_dir>/metrics.jsonl`` and the PNG curves come from
:class:`~artifex_rl.callbacks.MetricsLogger`, checkpoints from
:class:`~artifex_rl.callbacks.ModelCheckpoint` (``<run_dir>/checkpoints``),
and ``summary.json`` from :func:`write_summary`.
"""

from __future__ import annotations

import json
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from artifex_rl.callbacks import (
    CheckpointConfig,
    MetricsLogger,
    ModelCheckpoint,
    ProgressBarCallback,
    WandbLoggerCallback,
    WandbLoggerConfig,
)
from artifex_rl.events import Callback


def standard_callbacks(
    args: Namespace,
    *,
    run_config: Mapping[str, Any],
    checkpoint_every: int | None = None,
) -> list[Callback]:
    """Metrics file + plot, checkpoints, progress bar and (optionally) W&B for a recipe run."""
    os.makedirs(args.run_dir, exist_ok=True)
    callbacks: list[Callback] = [MetricsLogger(args.run_dir, plot=True)]
    if not getattr(args, "no_progress", False):
        callbacks.append(ProgressBarCallback())
    if getattr(args, "wandb_mode", "disabled") != "disabled":
        callbacks.append(
            WandbLoggerCallback(
                WandbLoggerConfig(
                    project=getattr(args, "wandb_project", "artifex-rl"),
                    name=f"{args.recipe}-seed{args.seed}",
                    config=dict(run_config),
                    mode=args.wandb_mode,
                    dir=args.run_dir,
                    tags=(args.recipe,),
                )
            )
        )
    callbacks.append(
        ModelCheckpoint(
            CheckpointConfig(
                dirpath=os.path.join(args.run_dir, "checkpoints"),
                every_n_train_steps=checkpoint_every,
                save_top_k=1,
                save_last=True,
            )
        )
    )
    return callbacks


def write_summary(run_dir: str, summary: Mapping[str, Any]) -> str:
    """Write ``summary.json`` atomically and return its path."""
    path = os.path.join(run_dir, "summary.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(summary), f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path
