"""Device meshes and the sharding rules of the train state.

One mesh axis, ``"data"``, carries both kinds of parallelism the trainer
offers (Levanter and MaxText name the same idea a "batch" and an "fsdp"
axis; here they are one axis until a model axis is needed):

- the batch's leading (sample) axis is split over it: ``P("data")``;
- parameters and optimizer state are replicated over it (data parallel), or
  with ``param_sharding="fsdp"`` each leaf is split along its largest axis
  whose size the data axis divides (FSDP / ZeRO-3 over one axis); XLA's
  SPMD partitioner inserts the all-gathers and reduce-scatters.

The rule for a leaf depends only on its shape, so a parameter and its
optimizer-state twins (Adam's ``mu``, ``nu``) get the same sharding.
Nothing here knows a trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
PARAM_SHARDINGS = ("replicated", "fsdp")


def make_mesh(data: int = -1, devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``data`` devices (``-1``: all of them).

    Args:
      data: devices on the data axis; ``-1`` takes every device (across all
        processes after ``jax.distributed.initialize``).
      devices: the devices to use (default ``jax.devices()``, ordered by
        process, so each process's devices hold a contiguous block of the batch).

    Returns:
      ``Mesh(devices[:data], ("data",))`` with an ``Auto`` axis (XLA propagates
      shardings; no sharding-in-types rules apply).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if data == -1 else data
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n > len(devices):
        raise ValueError(f"make_mesh: data must be -1 or an int in [1, {len(devices)}] (devices available), got {data!r}")
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(
            f"make_mesh: with {jax.process_count()} processes the data axis must span every device "
            f"({len(devices)}), got data={data}"
        )
    return Mesh(np.asarray(devices[:n]), (DATA,), axis_types=(AxisType.Auto,))


def data_size(mesh: Mesh) -> int:
    """Devices on the mesh's ``"data"`` axis."""
    if DATA not in mesh.shape:
        raise ValueError(f"the mesh needs an axis named {DATA!r}; it has axes {tuple(mesh.shape)}")
    return int(mesh.shape[DATA])


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """The batch sharding: axis ``leading`` split over ``"data"`` (``leading=1`` for ``(K, N, ...)`` stacks)."""
    return NamedSharding(mesh, P(*([None] * leading), DATA))


def fsdp_spec(shape: Sequence[int], n: int) -> P:
    """``P`` splitting the largest axis of ``shape`` that ``n`` divides (the first of equals); ``P()`` if none.

    Example: ``fsdp_spec((16, 64), 8) == P(None, "data")``; ``fsdp_spec((3, 5), 8) == P()``.
    """
    if n == 1:
        return P()
    best = None
    for axis, size in enumerate(shape):
        if size % n == 0 and size >= n and (best is None or size > shape[best]):
            best = axis
    if best is None:
        return P()
    return P(*([None] * best), DATA)


def leaf_sharding(leaf: Any, mesh: Mesh, mode: str) -> NamedSharding:
    """The sharding of one state leaf under ``mode`` (``"replicated"`` or ``"fsdp"``)."""
    if mode == "replicated":
        return replicated(mesh)
    return NamedSharding(mesh, fsdp_spec(np.shape(leaf), data_size(mesh)))


def tree_shardings(tree: Any, mesh: Mesh, mode: str) -> Any:
    """``tree`` -> the same tree of :func:`leaf_sharding` s."""
    if mode not in PARAM_SHARDINGS:
        raise ValueError(f"param_sharding must be one of {PARAM_SHARDINGS}, got {mode!r}")
    return jax.tree.map(lambda x: leaf_sharding(x, mesh, mode), tree)


def state_shardings(train_state: dict[str, Any], mesh: Mesh, mode: str) -> dict[str, Any]:
    """Shardings of a trainer's ``train_state``.

    ``params``, ``opt_state`` and ``extra`` (an EMA of the parameters) follow
    ``mode``; ``model_state`` (batch statistics, RNG counters), ``rng`` and
    ``step`` are replicated.
    """
    rep = replicated(mesh)
    out = {key: jax.tree.map(lambda _: rep, value) for key, value in train_state.items()}
    for key in ("params", "opt_state", "extra"):
        if key in train_state:
            out[key] = tree_shardings(train_state[key], mesh, mode)
    return out


__all__ = [
    "DATA",
    "PARAM_SHARDINGS",
    "batch_sharding",
    "data_size",
    "fsdp_spec",
    "leaf_sharding",
    "make_mesh",
    "replicated",
    "state_shardings",
    "tree_shardings",
]
