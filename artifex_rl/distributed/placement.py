"""Placing a trainer's arrays on a mesh: train state, batches, and the step's outputs.

:class:`MeshPlacement` is what a ``Trainer(..., mesh=...)`` holds. It puts
the train state on its shardings (:func:`~artifex_rl.distributed.mesh.state_shardings`),
host batches on the batch sharding (one process: ``jax.device_put`` splits a
numpy array across devices; several processes: each feeds its own rows with
``jax.make_array_from_process_local_data``), and wraps the pure step so its
new state keeps those shardings and its metrics come back replicated
(``jax.lax.with_sharding_constraint``; XLA inserts every collective).

A batch entry is split along its leading axis when the data axis divides
that axis; otherwise (a scalar, a per-batch vector of another length) it is
replicated. Every process runs the same program (SPMD), so every process
must call the same compiled functions with batches of the same shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from artifex_rl.distributed.mesh import DATA, data_size, replicated, state_shardings, tree_shardings


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    """``x`` (identical on every process) placed with ``sharding``."""
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
    if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    # Several processes, a value every process holds in full: each device takes its slice.
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


class MeshPlacement:
    """The shardings of one trainer on ``mesh`` (see the module docstring).

    Args:
      mesh: a mesh with a ``"data"`` axis (:func:`~artifex_rl.distributed.make_mesh`).
      param_sharding: ``"replicated"`` (data parallel) or ``"fsdp"``.
    """

    def __init__(self, mesh: Mesh, param_sharding: str = "replicated"):
        if not isinstance(mesh, Mesh):
            raise TypeError(
                f"mesh must be a jax.sharding.Mesh (e.g. artifex_rl.distributed.make_mesh()), got {type(mesh).__name__}"
            )
        self.mesh = mesh
        self.mode = param_sharding
        self.data = data_size(mesh)
        self.processes = jax.process_count()
        # Devices of the data axis this process feeds (its rows of every batch).
        self.local_data = self.data // self.processes if self.processes > 1 else self.data
        self.replicated = replicated(mesh)
        tree_shardings({}, mesh, param_sharding)  # validates the mode

    # -- the train state ------------------------------------------------------------
    def state_shardings(self, train_state: dict[str, Any]) -> dict[str, Any]:
        return state_shardings(train_state, self.mesh, self.mode)

    def place_state(self, train_state: dict[str, Any]) -> dict[str, Any]:
        """``train_state`` moved onto its shardings (arrays already there are kept)."""
        return jax.tree.map(_put, train_state, self.state_shardings(train_state))

    def place_frozen(self, frozen: Any) -> Any:
        """Frozen models (a reference policy) sharded like the parameters."""
        return jax.tree.map(_put, frozen, tree_shardings(frozen, self.mesh, self.mode))

    # -- batches --------------------------------------------------------------------
    def _split_spec(self, shape: tuple[int, ...], leading: int, rows_per_device_of: int) -> P | None:
        if len(shape) > leading and shape[leading] % rows_per_device_of == 0 and shape[leading] > 0:
            return P(*([None] * leading), DATA)
        return None

    def batch_sharding_of(self, shape: tuple[int, ...], leading: int = 0) -> NamedSharding:
        """The sharding of a *global* batch entry of ``shape`` (split if the data axis divides it)."""
        spec = self._split_spec(tuple(shape), leading, self.data)
        return self.replicated if spec is None else NamedSharding(self.mesh, spec)

    def place_batch(self, arrays: Any, leading: int = 0) -> Any:
        """Host or device batch entries placed with the batch sharding.

        ``leading`` is the sample axis (1 for a ``(K, N, ...)`` stack of K
        batches). With several processes each process passes its own rows
        (``N / process_count`` of them); an entry this process's devices do
        not divide is an error naming it (it cannot tell per-process rows from
        a value shared by all). A global array (made on the mesh by a compiled
        source) is kept whole.
        """
        if self.processes == 1:
            return jax.tree.map(lambda x: _put(x, self.batch_sharding_of(np.shape(x), leading)), arrays)

        def local(path: Any, x: Any) -> jax.Array:
            if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already global (a device source's)
                return _put(x, self.batch_sharding_of(x.shape, leading))
            shape = np.shape(x)
            if len(shape) <= leading:  # a scalar: the same on every process
                return jax.make_array_from_process_local_data(self.replicated, np.asarray(x))
            spec = self._split_spec(shape, leading, self.local_data)
            if spec is None:
                raise ValueError(
                    f"batch{jax.tree_util.keystr(path)} has {shape[leading]} rows on axis {leading} in "
                    f"process {jax.process_index()}; with {self.processes} processes each process feeds "
                    f"its own rows, a multiple of its {self.local_data} devices on the data axis"
                )
            return jax.make_array_from_process_local_data(NamedSharding(self.mesh, spec), np.asarray(x))

        return jax.tree_util.tree_map_with_path(local, arrays)

    def place_source_state(self, state: Any) -> Any:
        """A device source's state (environments along the leading axis) spread over the data axis;
        the same on every process (not per-process rows). Arrays already placed are kept."""
        return jax.tree.map(lambda x: _put(x, self.batch_sharding_of(np.shape(x))), state)

    def constrain_batch(self, tree: Any, leading: int = 0) -> Any:
        """Inside ``jit``: pin traced batch entries to the batch sharding where it divides them."""

        def one(x: Any) -> Any:
            spec = self._split_spec(np.shape(x), leading, self.data)
            return x if spec is None else jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

        return jax.tree.map(one, tree)

    def constrain_split(self, tree: Any) -> Any:
        """Inside ``jit``: a batch split into ``(parts, n, ...)`` micro- or minibatches keeps
        every part spread over the data axis (the same samples in each part as on one device)."""
        return self.constrain_batch(tree, leading=1)

    # -- the compiled step -------------------------------------------------------------
    def wrap_step(self, step: Callable[..., tuple[dict, dict, dict]]) -> Callable[..., tuple[dict, dict, dict]]:
        """The pure step with its new state pinned to the state shardings and metrics replicated."""
        rep = self.replicated

        def sharded_step(state, frozen_states, batch, static):
            new_state, metrics, outputs = step(state, frozen_states, batch, static)
            new_state = jax.lax.with_sharding_constraint(new_state, self.state_shardings(new_state))
            metrics = jax.tree.map(lambda m: jax.lax.with_sharding_constraint(m, rep), metrics)
            return new_state, metrics, outputs

        return sharded_step


__all__ = ["MeshPlacement"]
