"""The run's random streams: one key per (stream, step), disjoint by construction.

Every key is ``fold_in(fold_in(run_key, stream), step)``. Streams are small
distinct integers, so a stream's keys never equal another stream's (the old
scheme ``fold_in(run_key, step)`` made step 1443's key equal a salted host key).
Keys are derived where they are used: XLA drops a derivation nobody reads
(a threefry call costs as much as a small model's step on XLA:CPU).
"""

from __future__ import annotations

import jax

Array = jax.Array

#: The compiled step's stream; its key is split further by :func:`sub`.
STEP = 1
#: Host-side sampling for rewards that cannot be traced (GRPO's host path).
HOST_SAMPLE = 2
#: Sources (rollouts) seeded from the trainer, when they take no seed of their own.
SOURCE = 3

# Sub-streams of a step key.
PREPARE = 0
UPDATE = 1
EXTRA = 2
SHUFFLE = 3


def stream_key(run_key: Array, stream: int, step: Array | int) -> Array:
    """The key of ``stream`` at ``step``."""
    return jax.random.fold_in(jax.random.fold_in(run_key, stream), step)


def sub(key: Array, index: Array | int) -> Array:
    """An independent key for part ``index`` of the work ``key`` belongs to."""
    return jax.random.fold_in(key, index)
