"""What a trainer checkpoint holds, assembled from explicit state and restored into a trainer.

Lightning's checkpoint connector, for this trainer. A checkpoint is:

- arrays: ``{"train": trainer.train_state, "frozen": trainer.frozen_states}``
  (frozen models are saved so a resumed run measures KL and DPO rewards
  against the same reference, whatever model the new process passed in);
- metadata: counters, the config, every callback's ``state_dict()``, the
  metric aggregator's open interval as ``(sum, count)`` pairs, the latest
  logged metrics; callbacks may add entries with ``on_save_checkpoint``;
- the dataloader's own ``state_dict()`` when it has one.

Assembling a checkpoint reads state only: it dispatches no event.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from artifex_rl.checkpoint.io import CheckpointBundle, CheckpointWriter, read_checkpoint

if TYPE_CHECKING:
    from artifex_rl.trainer import Trainer


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def dump_checkpoint(trainer: Trainer) -> CheckpointBundle:
    """The trainer's checkpoint as a bundle (device arrays: the writer copies them if async)."""
    metadata: dict[str, Any] = {
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "batches_seen_in_epoch": trainer.batches_seen_in_epoch,
        "config": trainer.config.to_dict(),
        "trainer_class": type(trainer).__name__,
        "callbacks": trainer.callbacks.state_dicts(),
        "callback_metrics": dict(trainer.callback_metrics),
        "metrics": trainer.metrics.state_dict(),
    }
    for cb in trainer.callbacks:
        cb.on_save_checkpoint(trainer, metadata)
    info = {
        "trainer_class": _class_name(trainer),
        "model_classes": {name: _class_name(module) for name, module in trainer._views._modules.items()},
    }
    state = {"train": trainer.train_state, "frozen": trainer.frozen_states}
    return CheckpointBundle(state, metadata, info, trainer.dataloader_state())


def restore_checkpoint(trainer: Trainer, path: str | os.PathLike) -> None:
    """Load the checkpoint at ``path`` into ``trainer``: arrays, counters, callbacks, loader."""
    target = {"train": trainer.train_state, "frozen": trainer.frozen_states}
    read = read_checkpoint(path, target, trainer.dataloader_state())
    state, metadata = read["state"], read["metadata"]
    trainer.set_train_state(
        jax.tree.map(lambda ref, x: jnp.asarray(x, dtype=ref.dtype), trainer.train_state, state["train"])
    )
    trainer.frozen_states = jax.tree.map(
        lambda ref, x: jnp.asarray(x, dtype=ref.dtype), trainer.frozen_states, state["frozen"]
    )
    trainer.global_step = int(metadata["global_step"])
    trainer.current_epoch = int(metadata["current_epoch"])
    trainer.batches_seen_in_epoch = int(metadata.get("batches_seen_in_epoch", 0))
    trainer.callback_metrics = dict(metadata.get("callback_metrics", {}))
    trainer.metrics.load_state_dict(metadata.get("metrics", {}))
    trainer.callbacks.load_state_dicts(metadata.get("callbacks", {}))
    for cb in trainer.callbacks:
        cb.on_load_checkpoint(trainer, metadata)
    loader = trainer.dataloader
    if read["loader_state"] is not None and loader is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(read["loader_state"])


class TrainerCheckpointer:
    """Writes trainer checkpoints, synchronously or in the background (see :class:`CheckpointWriter`).

    Args:
      async_save: return once the state is copied to host memory; the orbax
        write runs in the writer thread while training goes on.
    """

    def __init__(self, async_save: bool = False):
        self.async_save = async_save
        self._writer = CheckpointWriter(async_save=async_save)

    def save(self, trainer: Trainer, path: str | os.PathLike, *, overwrite: bool = False, on_commit=None) -> str:
        """Write ``trainer``'s checkpoint to ``path``; returns the absolute path."""
        return self._writer.save(dump_checkpoint(trainer), path, overwrite=overwrite, on_commit=on_commit)

    def wait_until_finished(self) -> None:
        self._writer.wait_until_finished()

    def close(self) -> None:
        self._writer.close()


def save_trainer_checkpoint(trainer: Trainer, path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Save ``trainer`` to directory ``path``, synchronously; the write is atomic. Returns the path."""
    checkpointer = TrainerCheckpointer(async_save=False)
    try:
        return checkpointer.save(trainer, path, overwrite=overwrite)
    finally:
        checkpointer.close()


def load_trainer_checkpoint(trainer: Trainer, path: str | os.PathLike) -> None:
    """Restore the checkpoint at ``path`` into ``trainer`` (see :func:`restore_checkpoint`)."""
    restore_checkpoint(trainer, path)
