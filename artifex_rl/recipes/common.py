"""What every recipe's run directory holds, and the callbacks that write it.

* ``config.json``: every setting of the run, resolved (the recipe's settings
  as built, then, once training starts, the trainer's class and full config),
  and the exact command line under ``"command"`` -- enough to rerun it
  (:func:`write_run_config`, :class:`RunConfigWriter`);
* ``metrics.jsonl`` and the PNG curves (:class:`~artifex_rl.callbacks.MetricsLogger`);
* ``checkpoints/`` (:class:`~artifex_rl.callbacks.ModelCheckpoint`);
* ``summary.json`` (:func:`write_summary`);
* with ``--tensorboard``, event files under ``tensorboard/``
  (:class:`~artifex_rl.callbacks.TensorBoardLogger`); with ``--wandb-mode``, a W&B run.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from argparse import Namespace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax

from artifex_rl.callbacks import (
    CheckpointConfig,
    MetricsLogger,
    ModelCheckpoint,
    ProgressBarCallback,
    TensorBoardLogger,
    WandbLoggerCallback,
    WandbLoggerConfig,
)
from artifex_rl.callbacks._host import json_compatible
from artifex_rl.events import Callback

if TYPE_CHECKING:
    from artifex_rl.trainer import Trainer


def _write_json(path: str, payload: Mapping[str, Any]) -> str:
    if jax.process_index() != 0:  # several processes: process 0 writes the run directory
        return path
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(json_compatible(dict(payload)), f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def command_line(args: Namespace) -> str:
    """The command that started this run, shell-quoted (``args.argv`` set by the CLI, else ``sys.argv``)."""
    argv = getattr(args, "argv", None) or ["artifex-rl", *sys.argv[1:]]
    return shlex.join(argv)


def write_run_config(args: Namespace, run_config: Mapping[str, Any], trainer: Trainer | None = None) -> str:
    """Write ``<run_dir>/config.json``: the command, the recipe's settings and the trainer's config."""
    payload: dict[str, Any] = {
        "command": command_line(args),
        "recipe": getattr(args, "recipe", None),
        "seed": getattr(args, "seed", None),
        "run": dict(run_config),
        "loggers": {
            "wandb_mode": getattr(args, "wandb_mode", "disabled"),
            "wandb_project": getattr(args, "wandb_project", None),
            "tensorboard": bool(getattr(args, "tensorboard", False)),
            "progress_bar": not getattr(args, "no_progress", False),
        },
    }
    if trainer is not None:
        payload["trainer"] = {"class": type(trainer).__name__, **trainer.config.to_dict()}
    return _write_json(os.path.join(args.run_dir, "config.json"), payload)


class RunConfigWriter(Callback):
    """Adds the trainer's class and resolved config to ``config.json`` when training starts."""

    log_may_lag = True  # never reads metrics
    main_process_only = True  # several processes: process 0 writes

    def __init__(self, args: Namespace, run_config: Mapping[str, Any]):
        self.args = args
        self.run_config = dict(run_config)

    def on_train_begin(self, trainer: Trainer) -> None:
        write_run_config(self.args, self.run_config, trainer)


def standard_callbacks(
    args: Namespace,
    *,
    run_config: Mapping[str, Any],
    checkpoint_every: int | None = None,
) -> list[Callback]:
    """config.json, metrics file + plot, checkpoints, progress bar and (optionally) W&B and TensorBoard.

    ``config.json`` is written right away (so a run that fails before
    training still says how it was started) and again with the trainer's
    config when training begins.
    """
    os.makedirs(args.run_dir, exist_ok=True)
    write_run_config(args, run_config)
    callbacks: list[Callback] = [RunConfigWriter(args, run_config), MetricsLogger(args.run_dir, plot=True)]
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
    if getattr(args, "tensorboard", False):
        callbacks.append(TensorBoardLogger(os.path.join(args.run_dir, "tensorboard"), hparams=run_config))
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


def recipe_mesh() -> jax.sharding.Mesh | None:
    """A data mesh over every process's devices in a multi-process run (else ``None``: one device)."""
    if jax.process_count() == 1:
        return None
    from artifex_rl.distributed import make_mesh

    return make_mesh()


def write_summary(run_dir: str, summary: Mapping[str, Any]) -> str:
    """Write ``summary.json`` atomically and return its path."""
    return _write_json(os.path.join(run_dir, "summary.json"), summary)
