"""Scale-out on JAX's own distributed runtime: meshes, shardings, several processes.

- :mod:`~artifex_rl.distributed.mesh`: ``make_mesh(data=-1)`` and the sharding
  rules (batch over ``"data"``; parameters replicated or FSDP);
- :mod:`~artifex_rl.distributed.placement`: :class:`MeshPlacement`, what a
  ``Trainer(..., mesh=...)`` uses to place its state and batches;
- :mod:`~artifex_rl.distributed.runtime`: ``initialize`` (``jax.distributed``)
  and ``is_main_process``;
- :mod:`~artifex_rl.distributed.summary`: the sharding summary ``fit`` prints.

See ``docs/distributed.md``.
"""

from artifex_rl.distributed.mesh import (
    DATA,
    PARAM_SHARDINGS,
    batch_sharding,
    data_size,
    fsdp_spec,
    make_mesh,
    replicated,
    state_shardings,
)
from artifex_rl.distributed.placement import MeshPlacement
from artifex_rl.distributed.runtime import initialize, is_main_process
from artifex_rl.distributed.summary import sharding_summary

__all__ = [
    "DATA",
    "PARAM_SHARDINGS",
    "MeshPlacement",
    "batch_sharding",
    "data_size",
    "fsdp_spec",
    "initialize",
    "is_main_process",
    "make_mesh",
    "replicated",
    "sharding_summary",
    "state_shardings",
]
