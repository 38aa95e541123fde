"""Orbax reads and writes of checkpoint directories; no ``Trainer`` here.

Long because it holds the whole orbax surface (bundle writes with their
writer thread, reads with shape checks, and the model-only restore); each
part is small.

A checkpoint is one directory written by an orbax ``Checkpointer`` with a
``CompositeCheckpointHandler``::

    <path>/
      state/        the arrays: {"train": train state, "frozen": frozen models}
      metadata/     counters, config, callback states, pending metrics (JSON)
      info/         format version, classes, how the dataloader state is stored (JSON)
      dataloader/   the dataloader's state pytree, when it has arrays
      _CHECKPOINT_METADATA  commit_success.txt   (orbax)

What goes into a :class:`CheckpointBundle` is decided by
:mod:`artifex_rl.checkpoint.connector`.

Atomicity: orbax writes into ``<path>.orbax-checkpoint-tmp-<n>`` and renames
it to ``<path>`` only after every item is on disk, so a directory named
``<path>`` is always complete; a writer killed mid-save leaves only the tmp
directory (which :func:`is_complete_checkpoint` rejects) and every earlier
checkpoint untouched.

Async saves and donation: the trainer donates its state to the next compiled
step, which frees (or reuses) those device buffers. An async save that still
held them would write garbage or fail with "Array has been deleted", so an
async bundle holds an owned host copy (:func:`host_snapshot`), made on the
training thread; only the disk write runs in the writer thread.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

_log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: named models, frozen models and (sum, count) pending metrics
_TMP_MARKER = ".orbax-checkpoint-tmp"


# ---------------------------------------------------------------------- #
# Pytree helpers
# ---------------------------------------------------------------------- #
def _key_name(key: Any) -> str:
    """One path element as a plain string, the same for jax key paths and orbax metadata trees."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _flat_shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"params/l1/kernel": (shape, dtype)}`` for every array leaf of ``tree``."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(_key_name(k) for k in path)
        shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
        dtype = getattr(leaf, "dtype", None)
        flat[name] = (shape, str(np.dtype(dtype)) if dtype is not None else type(leaf).__name__)
    return flat


def _is_typed_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _unwrap_keys(tree: Any) -> Any:
    """Typed PRNG keys (``jax.random.key``) -> their raw uint32 data, which orbax can store."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, tree)


def _key_impl(x: Any) -> Any:
    try:
        return jax.random.key_impl(x)
    except TypeError:  # an abstract key (ShapeDtypeStruct): the impl lives on its dtype
        return x.dtype._impl


def _abstract(tree: Any, default_sharding: jax.sharding.Sharding | None = None) -> Any:
    """Restore target for ``tree``: shape/dtype/sharding of each leaf (typed keys as raw data).

    Leaves may be concrete or abstract (``ShapeDtypeStruct`` from ``nnx.eval_shape``);
    ``default_sharding`` is used where a leaf has none.
    """

    def leaf(x: Any) -> Any:
        sharding = getattr(x, "sharding", None) or default_sharding
        if _is_typed_key(x):
            x = jax.eval_shape(jax.random.key_data, x)
        if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        if isinstance(x, (np.ndarray, np.generic)):
            return np.zeros(x.shape, x.dtype)  # numpy target -> restored as numpy
        return x

    return jax.tree.map(leaf, tree)


def _rewrap_keys(restored: Any, reference: Any) -> Any:
    """Raw key data back into typed keys wherever ``reference`` has a typed key."""
    return jax.tree.map(
        lambda r, ref: jax.random.wrap_key_data(r, impl=_key_impl(ref)) if _is_typed_key(ref) else r,
        restored,
        reference,
    )


def host_snapshot(tree: Any) -> Any:
    """An owned host (numpy) copy of ``tree``, safe to keep while the device buffers are donated.

    ``jax.device_get`` starts every transfer before waiting on any; the extra
    ``np.array(..., copy=True)`` matters on the CPU backend, where
    ``device_get`` returns a view of the device buffer itself.
    """
    return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(_unwrap_keys(tree)))


def _is_json_tree(tree: Any) -> bool:
    if isinstance(tree, Mapping):
        return all(isinstance(k, str) and _is_json_tree(v) for k, v in tree.items())
    if isinstance(tree, (list, tuple)):
        return all(_is_json_tree(v) for v in tree)
    return tree is None or isinstance(tree, (bool, int, float, str))


def _json_default(obj: Any) -> Any:
    """JSON fallback for metadata: numpy/jax scalars and arrays become numbers/lists."""
    if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return repr(obj)  # e.g. a reward function object in a config: keep a readable trace


def to_json_compatible(obj: Any) -> Any:
    """``obj`` converted to plain JSON types (what orbax's ``JsonSave`` can write)."""
    return json.loads(json.dumps(obj, default=_json_default))


# ---------------------------------------------------------------------- #
# Checkpoint directories
# ---------------------------------------------------------------------- #
def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True if ``path`` is a finalized (fully written) trainer checkpoint."""
    path = os.fspath(path)
    if _TMP_MARKER in os.path.basename(path.rstrip("/")) or not os.path.isdir(path):
        return False
    return os.path.isdir(os.path.join(path, "state")) and os.path.isdir(os.path.join(path, "metadata"))


def _check_checkpoint_dir(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    if not is_complete_checkpoint(path):
        raise ValueError(
            f"{path!r} is not a complete artifex_rl checkpoint (an unfinished write leaves a "
            f"'*{_TMP_MARKER}-*' directory; a checkpoint holds 'state/' and 'metadata/')"
        )


def _items_handler(state_handler: ocp.CheckpointHandler | None = None) -> ocp.CompositeCheckpointHandler:
    """Handlers for every item a checkpoint may hold (orbax warns about items without one)."""
    return ocp.CompositeCheckpointHandler(
        state=state_handler or ocp.StandardCheckpointHandler(),
        metadata=ocp.JsonCheckpointHandler(),
        info=ocp.JsonCheckpointHandler(),
        dataloader=ocp.StandardCheckpointHandler(),
    )


def _read_json_item(path: str, item: str) -> dict[str, Any]:
    return ocp.Checkpointer(_items_handler()).restore(
        path, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()})
    )[item]


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (``trainer.checkpoint_metadata()`` at save time)."""
    path = os.fspath(path)
    _check_checkpoint_dir(path)
    return _read_json_item(path, "metadata")


def _stored_state_shapes(path: str) -> dict[str, tuple[tuple[int, ...], str]]:
    meta = ocp.Checkpointer(_items_handler()).metadata(path)
    return _flat_shapes(meta.item_metadata["state"])


def _check_compatible(stored: Mapping, wanted: Mapping, path: str, what: str) -> None:
    """Raise a ValueError naming every missing/unexpected key and shape/dtype mismatch."""
    missing = sorted(set(wanted) - set(stored))
    unexpected = sorted(set(stored) - set(wanted))
    mismatched = [
        f"  {k}: checkpoint has shape {stored[k][0]} {stored[k][1]}, {what} wants {wanted[k][0]} {wanted[k][1]}"
        for k in sorted(set(stored) & set(wanted))
        if stored[k][0] != wanted[k][0] or stored[k][1] != wanted[k][1]
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"checkpoint {path!r} does not match {what} (saved from another model or optimizer?):"]
    if missing:
        lines.append(
            f"  keys {what} has but the checkpoint lacks: {missing[:10]}"
            + (" ..." if len(missing) > 10 else "")
        )
    if unexpected:
        lines.append(
            f"  keys the checkpoint has but {what} lacks: {unexpected[:10]}"
            + (" ..." if len(unexpected) > 10 else "")
        )
    lines.extend(mismatched[:10])
    raise ValueError("\n".join(lines))


# ---------------------------------------------------------------------- #
# Trainer checkpoints
# ---------------------------------------------------------------------- #
@dataclass
class CheckpointBundle:
    """Everything one checkpoint holds, assembled by the connector.

    Attributes:
      state: the array pytree (typed keys allowed; an async bundle holds host copies).
      metadata: JSON-compatible dict (counters, config, callback states).
      info: JSON-compatible dict (classes); the format version is added on write.
      loader_state: the dataloader's state (JSON tree or array pytree) or ``None``.
    """

    state: Any
    metadata: dict[str, Any]
    info: dict[str, Any]
    loader_state: Any = None


def _save_args(bundle: CheckpointBundle, snapshot: bool) -> ocp.args.Composite:
    """Orbax arguments for one checkpoint (``snapshot``: copy arrays to host first)."""
    state = host_snapshot(bundle.state) if snapshot else _unwrap_keys(bundle.state)
    info: dict[str, Any] = {"format_version": FORMAT_VERSION, **bundle.info, "dataloader_state": None}
    items: dict[str, Any] = {}
    loader_state = bundle.loader_state
    if loader_state is not None:
        if _is_json_tree(loader_state):
            info["dataloader_state"] = {"format": "json", "value": loader_state}
        else:
            info["dataloader_state"] = {"format": "pytree"}
            loader_state = host_snapshot(loader_state) if snapshot else _unwrap_keys(loader_state)
            items["dataloader"] = ocp.args.StandardSave(loader_state)
    return ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        metadata=ocp.args.JsonSave(to_json_compatible(bundle.metadata)),
        info=ocp.args.JsonSave(to_json_compatible(info)),
        **items,
    )


_writer_lock = threading.Lock()
_writer_pool: ThreadPoolExecutor | None = None
_in_flight: set[Future] = set()  # every save not yet finished, whoever still holds its checkpointer
_exit_hook_registered = False


def _finish_saves_at_exit() -> None:
    for future in list(_in_flight):
        try:
            future.result()
        except Exception:  # noqa: BLE001 - report every failed save, then let the process end
            _log.exception("a checkpoint save failed while the process was exiting")


def _register_exit_hook() -> None:
    """Finish in-flight saves when the interpreter exits, before thread pools stop.

    ``atexit`` runs too late: by then ``concurrent.futures`` refuses new work
    ("cannot schedule new futures after interpreter shutdown"), which orbax
    needs for its writes. ``threading._register_atexit`` hooks run first, in
    reverse order of registration, so this one (registered after
    ``concurrent.futures.thread`` was imported) runs while pools still work.
    """
    global _exit_hook_registered
    with _writer_lock:
        if _exit_hook_registered:
            return
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(_finish_saves_at_exit)
        else:  # pragma: no cover - CPython < 3.9
            import atexit

            atexit.register(_finish_saves_at_exit)
        _exit_hook_registered = True


def _writer() -> ThreadPoolExecutor:
    """The one thread that runs every orbax save of this process.

    Orbax saves running concurrently in several threads interfere through
    orbax's process-wide signalling ("Timeout waiting for key
    '.../item_directory_creation'"), e.g. two ModelCheckpoints in one run;
    one writer thread serialises them.
    """
    global _writer_pool
    with _writer_lock:
        if _writer_pool is None:
            _writer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="artifex-checkpoint")
        return _writer_pool


class CheckpointWriter:
    """Writes checkpoint bundles, synchronously or in the background.

    Every save runs in the process's checkpoint writer thread (orbax saves
    must not overlap); a synchronous save waits for it.

    Args:
      async_save: return as soon as the state is copied to host memory (the
        device-to-host transfer) and the JSON metadata is built; the orbax
        write (still atomic: tmp dir + rename) and ``on_commit`` run in the
        writer thread while training goes on. At most one save per
        checkpointer is in flight: a new save first waits for the previous
        one and re-raises its error, if any. Call :meth:`wait_until_finished`
        (or :meth:`close`) before reading a checkpoint; at interpreter exit
        the in-flight saves are finished first, so a normally exiting
        process never leaves a half-written checkpoint.

    Why not orbax's ``AsyncCheckpointer``: its blocking phase (threads,
    futures and event loops started per save) measured 11-30 ms per save on
    a small model on a loaded 2-core machine, about the time of 100 training
    steps; with the state already on the host there is nothing left that
    must block.
    """

    def __init__(self, async_save: bool = False):
        self.async_save = async_save
        self._checkpointer = ocp.Checkpointer(_items_handler())
        self._pending: Future | None = None
        if async_save:
            _register_exit_hook()

    def save(
        self,
        bundle: CheckpointBundle,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        on_commit: Callable[[], None] | None = None,
    ) -> str:
        """Write ``bundle`` to ``path`` (in the background if async); returns the absolute path.

        Args:
          bundle: what to save; its arrays are copied to the host now when
            async, so the trainer may train on at once.
          path: the checkpoint directory; must not exist unless ``overwrite``.
          overwrite: replace an existing checkpoint at ``path``.
          on_commit: called once the checkpoint is complete on disk (in the
            writer thread), e.g. to update an index or delete checkpoints it
            supersedes.
        """
        path = os.path.abspath(os.fspath(path))
        self.wait_until_finished()
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"checkpoint directory {path!r} already exists (pass overwrite=True)")
        # A host copy needs every array on this process; arrays spanning several
        # processes are written from the devices, so that save is synchronous.
        snapshot = self.async_save and all(
            getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves((bundle.state, bundle.loader_state))
        )
        args = _save_args(bundle, snapshot=snapshot)

        def write() -> None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._checkpointer.save(path, args=args, force=overwrite)
            if on_commit is not None:
                on_commit()

        self._pending = _writer().submit(write)
        _in_flight.add(self._pending)
        self._pending.add_done_callback(_in_flight.discard)
        if not snapshot:
            self.wait_until_finished()
        return path

    def wait_until_finished(self) -> None:
        """Block until this checkpointer's in-flight save (if any) is committed; re-raises its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the in-flight save and release orbax's resources."""
        try:
            self.wait_until_finished()
        finally:
            self._checkpointer.close()


def read_checkpoint(path: str | os.PathLike, state_target: Any, loader_target: Any = None) -> dict[str, Any]:
    """Read the checkpoint at ``path`` onto ``state_target`` (shapes, dtypes, shardings).

    Returns ``{"state", "metadata", "info", "loader_state"}``. Raises
    ``ValueError`` naming every mismatched key if the stored arrays do not fit
    the target (a checkpoint of another model or optimizer).
    """
    path = os.path.abspath(os.fspath(path))
    _check_checkpoint_dir(path)
    target = _abstract(state_target)
    _check_compatible(_stored_state_shapes(path), _flat_shapes(target), path, "this trainer's state")
    info = _read_json_item(path, "info")
    if info.get("format_version", 0) != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path!r} has format version {info.get('format_version')}; this artifex_rl "
            f"reads version {FORMAT_VERSION}"
        )
    args: dict[str, Any] = {"state": ocp.args.StandardRestore(target), "metadata": ocp.args.JsonRestore()}
    loader_info = info.get("dataloader_state") or {}
    if loader_info.get("format") == "pytree":
        args["dataloader"] = ocp.args.StandardRestore(_abstract(loader_target) if loader_target is not None else None)
    restored = ocp.Checkpointer(_items_handler()).restore(path, args=ocp.args.Composite(**args))
    loader_state = None
    if loader_info.get("format") == "json":
        loader_state = loader_info["value"]
    elif loader_info.get("format") == "pytree":
        loader_state = restored["dataloader"]
        if loader_target is not None:
            loader_state = _rewrap_keys(loader_state, loader_target)
    return {
        "state": _rewrap_keys(restored["state"], state_target),
        "metadata": restored["metadata"],
        "info": info,
        "loader_state": loader_state,
    }


# ---------------------------------------------------------------------- #
# Models without a trainer
# ---------------------------------------------------------------------- #
def _nest(flat: Mapping[tuple, Any]) -> dict:
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return out


def restore_model(path: str | os.PathLike, abstract_model: nnx.Module, name: str = "model") -> nnx.Module:
    """Load model ``name``'s variables from a trainer checkpoint into ``abstract_model``'s architecture.

    Only that model's parameters and other variables are read (not the
    optimizer state), whatever filter split them into trained and untrained.

    Args:
      path: a trainer checkpoint directory.
      abstract_model: the architecture, typically
        ``nnx.eval_shape(lambda: Model(..., rngs=nnx.Rngs(0)))`` (no memory
        allocated); a concrete model works too (its values are replaced).
      name: the model's name in the trainer (``"model"`` for a single-model trainer).

    Returns:
      A new model holding the checkpoint's values (on the default device).
    """
    path = os.path.abspath(os.fspath(path))
    _check_checkpoint_dir(path)
    graphdef, state = nnx.split(abstract_model)
    pure = nnx.to_pure_dict(state)
    by_name = {
        "/".join(_key_name(k) for k in leaf_path): (tuple(_key_name(k) for k in leaf_path), leaf_path, leaf)
        for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(pure)[0]
    }
    stored = _stored_state_shapes(path)
    placed: dict[tuple, Any] = {}
    found: dict[str, tuple] = {}
    for part in ("params", "model_state"):
        prefix = f"train/{part}/{name}/"
        for key, shape in stored.items():
            if key.startswith(prefix) and key[len(prefix):] in by_name:
                names, leaf_path, leaf = by_name[key[len(prefix):]]
                placed[("train", part, name, *names)] = leaf
                found[key[len(prefix):]] = shape
    if not found and not any(k.startswith(f"train/params/{name}/") for k in stored):
        models = sorted({k.split("/")[2] for k in stored if k.startswith("train/params/")})
        raise ValueError(f"checkpoint {path!r} has no model named {name!r}; it has {models}")
    wanted = {k: _flat_shapes(_abstract({"x": v[2]}))["x"] for k, v in by_name.items()}
    _check_compatible(found, wanted, path, f"the model ({type(abstract_model).__name__})")
    target = _abstract(_nest(placed), jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    # PyTreeRestore with partial_restore reads only the requested subtrees.
    checkpointer = ocp.Checkpointer(_items_handler(ocp.PyTreeCheckpointHandler()))
    restored = checkpointer.restore(
        path,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            )
        ),
    )["state"]["train"]
    values = {}
    for part in ("params", "model_state"):
        sub = restored.get(part, {}).get(name, {})
        for leaf_path, value in jax.tree_util.tree_flatten_with_path(sub)[0]:
            values["/".join(_key_name(k) for k in leaf_path)] = value
    leaves = []
    for key, (_, _, ref) in by_name.items():
        value = values[key]
        leaves.append(jax.random.wrap_key_data(value, impl=_key_impl(ref)) if _is_typed_key(ref) else value)
    treedef = jax.tree.structure(pure)
    nnx.replace_by_pure_dict(state, jax.tree.unflatten(treedef, leaves))
    return nnx.merge(graphdef, state)


def load_model(path: str | os.PathLike, build_fn: Callable[[], nnx.Module], name: str = "model") -> nnx.Module:
    """Build the model with ``build_fn`` (abstractly, no memory) and load the checkpoint into it.

    Example::

        model = load_model("checkpoints/step_00001000", lambda: MLP(4, 2, rngs=nnx.Rngs(0)))
    """
    return restore_model(path, nnx.eval_shape(build_fn), name)
