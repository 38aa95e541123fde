"""Checkpoints: orbax I/O (:mod:`.io`) and what a trainer's checkpoint holds (:mod:`.connector`)."""

from artifex_rl.checkpoint.connector import (
    TrainerCheckpointer,
    dump_checkpoint,
    load_trainer_checkpoint,
    restore_checkpoint,
    save_trainer_checkpoint,
)
from artifex_rl.checkpoint.io import (
    CheckpointBundle,
    CheckpointWriter,
    host_snapshot,
    is_complete_checkpoint,
    load_model,
    read_checkpoint_metadata,
    restore_model,
)

__all__ = [
    "CheckpointBundle",
    "CheckpointWriter",
    "TrainerCheckpointer",
    "dump_checkpoint",
    "host_snapshot",
    "is_complete_checkpoint",
    "load_model",
    "load_trainer_checkpoint",
    "read_checkpoint_metadata",
    "restore_checkpoint",
    "restore_model",
    "save_trainer_checkpoint",
]
