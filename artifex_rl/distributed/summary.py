"""A readable account of where a trainer's arrays live: printed when ``fit`` starts on a mesh."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

_MAX_ROWS = 12


def _spec(sharding: Any) -> str:
    spec = getattr(sharding, "spec", None)
    return "replicated" if spec is None or all(s is None for s in spec) else f"P{tuple(spec)}"


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if hasattr(leaf, "shape") and hasattr(leaf, "sharding"):
            out.append(("/".join(_key_name(k) for k in path), leaf))
    return out


def _section(title: str, tree: Any) -> list[str]:
    leaves = _leaves(tree)
    if not leaves:
        return []
    total = sum(int(np.prod(x.shape)) for _, x in leaves)
    per_device = sum(int(np.prod(x.sharding.shard_shape(x.shape))) for _, x in leaves)
    split = sum(1 for _, x in leaves if _spec(x.sharding) != "replicated")
    lines = [
        f"  {title}: {len(leaves)} arrays, {total:,} values; {split} split, "
        f"{len(leaves) - split} replicated; {per_device:,} values per device ({per_device / max(total, 1):.0%})"
    ]
    shown = sorted(leaves, key=lambda kv: -int(np.prod(kv[1].shape)))[:_MAX_ROWS]
    for name, x in shown:
        lines.append(
            f"    {name:<40} {str(tuple(x.shape)):<14} {_spec(x.sharding):<22} "
            f"per device {tuple(x.sharding.shard_shape(x.shape))}"
        )
    if len(leaves) > _MAX_ROWS:
        lines.append(f"    ... {len(leaves) - _MAX_ROWS} smaller arrays")
    return lines


def sharding_summary(mesh: Mesh, mode: str, train_state: Any, batch: Any = None) -> str:
    """Mesh, parameter/optimizer shardings and (if given) a placed batch's split, one line per array.

    Args:
      mesh: the trainer's mesh.
      mode: its ``param_sharding``.
      train_state: the placed train state.
      batch: a placed batch (``{key: jax.Array}``), to show that its leading axis is split.
    """
    kinds = sorted({d.platform for d in mesh.devices.flat})
    lines = [
        f"sharding: mesh {dict(mesh.shape)} over {mesh.devices.size} {'/'.join(kinds)} devices, "
        f"{jax.process_count()} process(es); param_sharding={mode!r}; batch leading axis over 'data'"
    ]
    lines += _section("params", train_state.get("params", {}))
    lines += _section("opt_state", train_state.get("opt_state", {}))
    if batch is not None:
        lines += _section("batch", batch)
    return "\n".join(lines)


__all__ = ["sharding_summary"]
