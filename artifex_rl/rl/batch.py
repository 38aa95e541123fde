"""Reading RL batches: key aliases, required keys, shape checks, scoring.

All checks run at trace time (shapes are static), so a bad batch fails on the
first ``train_step`` with a message that names the key, the shape it has and
the shape that was expected -- before any compiled code runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from artifex_rl.rl.policies import PolicyHead, token_entropies, token_log_probs

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


def score_sequences(
    model: nnx.Module, prompts: Array, completions: Array
) -> tuple[Array, Array]:
    """Per-token log-probs and entropies of ``completions`` given ``prompts``.

    One forward pass of the causal LM over ``concat(prompts, completions)``.

    Args:
      model: maps tokens ``(B, L)`` to logits ``(B, L, V)``.
      prompts: ``(B, P)`` int tokens.
      completions: ``(B, N)`` int tokens.

    Returns:
      ``(log_probs, entropies)``, each ``(B, N)``: entry ``t`` scores
      completion token ``t`` (predicted from position ``P + t - 1``).
    """
    tokens = jnp.concatenate([prompts, completions], axis=1)
    logits = model(tokens)
    p = prompts.shape[1]
    return token_log_probs(logits, tokens)[:, p:], token_entropies(logits)[:, p:]


def score_actions(
    model_output: Any, head: PolicyHead, actions: Array
) -> tuple[Array, Array]:
    """``(log_prob, entropy)`` of ``actions`` under a policy head's reading of ``model_output``."""
    return head.log_prob(model_output, actions), head.entropy(model_output)
