"""Reading batches: key aliases, required keys, shape checks.

All checks run at trace time (shapes are static), so a bad batch fails on the
first ``train_step`` with a message that names the key, the shape it has and
the shape that was expected -- before any compiled code runs. This module
knows no trainer: ``autoregressive`` and the RL trainers import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

#: The seeds use both names for the policy's input.
_ALIASES = {"states": "observations", "prompts": "observations"}


def canonical(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``batch`` with aliased keys renamed (``states`` -> ``observations``)."""
    out = dict(batch)
    for alias, name in _ALIASES.items():
        if alias in out and name not in out:
            out[name] = out.pop(alias)
    return out


def require(batch: Mapping[str, Any], keys: Sequence[str], who: str) -> None:
    """Raise a KeyError naming the missing keys, what ``who`` needs, and what was given."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(
            f"{who} batch is missing {missing}; it needs {list(keys)} "
            f"(got keys {sorted(batch)})"
        )


def refuse_mask(batch: Mapping[str, Any], who: str) -> None:
    """Raise a ValueError if ``batch`` has a ``"mask"`` that ``who``'s loss cannot weight by.

    ``ArrayDataLoader(drop_last=False)`` pads the last batch with real rows and
    a ``"mask"``; a loss that ignored it would count the padding as data.
    """
    if "mask" in batch:
        raise ValueError(
            f"{who} does not weight samples, so batch['mask'] would be ignored and padded rows would count "
            "as data: drop the key, or batch with ArrayDataLoader(drop_last=True)"
        )


def check_shape(name: str, x: Any, expected: tuple[int | None, ...], who: str) -> None:
    """``x.shape`` must equal ``expected`` (``None`` entries match any size)."""
    shape = jnp.shape(x)
    ok = len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected, strict=True))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{who}: batch[{name!r}] has shape {shape}, expected {want}")


def check_leading(name: str, x: Any, leading: tuple[int, ...], who: str) -> None:
    """``x.shape`` must start with ``leading``."""
    shape = jnp.shape(x)
    if shape[: len(leading)] != tuple(leading):
        raise ValueError(
            f"{who}: batch[{name!r}] has shape {shape}, expected leading dims {tuple(leading)}"
        )


def flatten_leading(x: Array, n: int) -> Array:
    """Merge the first ``n`` axes: ``(B, T, ...) -> (B*T, ...)`` for ``n = 2``."""
    return x.reshape((-1,) + x.shape[n:])


__all__ = ["canonical", "check_leading", "check_shape", "flatten_leading", "refuse_mask", "require"]
