"""The compiled K-round runner: one program for every chunk of steps.

``run`` does up to K rounds of "get a batch -> step" in one ``lax.scan``.
The batch of a round comes from a *batch provider*:

- host or device batches given by the caller, stacked along a leading K axis
  (a chunk shorter than K is padded by repeating its last batch), or
- a device source's pure ``batch_fn(params, model_state, source_state)``, which
  makes the round's batch with the parameters of the round before (a rollout).

A round ``i >= n_active`` is skipped with ``lax.cond``, so a shorter chunk
(at ``max_steps``, an epoch end, a logging step) runs the *same* program:
one compile serves every chunk length. ``train_step(batch)`` does not come
through here: it calls the step directly (K = 1 needs no scan).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from artifex_rl.core.state import SINGLE

# Exact types checked first: isinstance against the jax.Array ABC is slower.
_ARRAY_TYPES = frozenset({type(jnp.zeros(())), np.ndarray})

# Batch entries of these Python types are compile-time constants of the step
# (e.g. the seeds' ``"group_size": 4``); a new value compiles a new step.
_STATIC_TYPES = (bool, int, float, str, type(None))


def split_batch(batch: Any) -> tuple[dict[str, Any], tuple]:
    """``batch`` -> (array entries, sorted static Python-scalar entries); errors name the key."""
    from collections.abc import Mapping

    if not isinstance(batch, Mapping):
        raise TypeError(f"a batch must be a mapping of str -> array (e.g. a dict), got {type(batch).__name__}")
    arrays: dict[str, Any] = {}
    static = []
    for key, value in batch.items():
        if type(value) in _ARRAY_TYPES or isinstance(value, (jax.Array, np.ndarray, np.generic)):
            arrays[key] = value
        elif isinstance(value, Mapping):
            arrays[key] = _check_nested(value, key)
        elif isinstance(value, _STATIC_TYPES):
            static.append((key, value))
        else:
            raise TypeError(
                f"batch[{key!r}] must be an array (jax or numpy), a mapping of arrays, or a "
                f"Python scalar; got {type(value).__name__}"
                + (" (convert lists with jnp.asarray)" if isinstance(value, (list, tuple)) else "")
            )
    return arrays, tuple(sorted(static))


def _check_nested(value: Any, prefix: str) -> dict:
    from collections.abc import Mapping

    out = {}
    for key, item in value.items():
        if isinstance(item, (jax.Array, np.ndarray, np.generic)):
            out[key] = item
        elif isinstance(item, Mapping):
            out[key] = _check_nested(item, f"{prefix}.{key}")
        else:
            raise TypeError(f"batch[{prefix!r}][{key!r}] must be an array, got {type(item).__name__}")
    return out


class TraceCounter:
    """How many times the step was traced (compiled); tests use it to catch retraces."""

    def __init__(self) -> None:
        self.count = 0

    def counted(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            self.count += 1
            return fn(*args, **kwargs)

        return wrapper


def make_runner(
    step: Callable,
    k: int,
    unroll: int | bool = 1,
    policy_name: str = SINGLE,
    constrain_batch: Callable[[Any], Any] | None = None,
) -> Callable:
    """``run(state, frozen, source_state, batches, static, n_active, batch_fn)`` over K rounds.

    ``constrain_batch`` (on a mesh) pins a batch made on the device by
    ``batch_fn`` to the batch sharding.

    ``batches`` is a tuple of K batch dicts (device arrays, stacked inside the
    call) or one dict of ``(K, ...)`` host arrays, or ``None`` with a
    ``batch_fn`` (then ``static`` is ignored: the source's batch says it).
    Returns ``(state, source_state, metrics)`` with metrics stacked ``(K, ...)``;
    rows ``>= n_active`` are zeros. Rounds ``>= n_active`` are skipped by a
    conditional in a rolled scan; fully unrolled (``unroll=True`` or ``>= k``)
    they run and their results are dropped (no conditional: see ``one``).
    """

    fully_unrolled = unroll is True or (not isinstance(unroll, bool) and unroll >= k)

    def run(state, frozen, source_state, batches, static, n_active, batch_fn):
        if isinstance(batches, tuple):
            batches = jax.tree.map(lambda *leaves: jnp.stack(leaves), *batches)

        def real(carry, batch):
            state, source_state = carry
            round_static = static
            if batch_fn is not None:
                made, source_state = batch_fn(
                    state["params"][policy_name], state["model_state"][policy_name], source_state
                )
                batch, round_static = split_batch(made)
                if constrain_batch is not None:
                    batch = constrain_batch(batch)
            state, metrics, _ = step(state, frozen, batch, round_static)
            return (state, source_state), metrics

        # A skipped round returns zeros shaped like a real round's metrics.
        example = jax.tree.map(lambda x: x[0], batches) if batches is not None else None
        shapes = jax.eval_shape(real, (state, source_state), example)[1]

        def skip(carry, batch):
            return carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def one(carry, xs):
            index, batch = xs
            if not fully_unrolled:
                return jax.lax.cond(index < n_active, real, skip, carry, batch)
            # Unrolled, every round runs and a padding round's results are dropped
            # by selects: XLA:CPU runs a conv net's gradient inside a conditional
            # as slowly as inside a rolled loop (~25x plain jit, bench/trainer_overhead.py).
            # The waste is the padding rounds of a call shorter than K.
            new_carry, metrics = real(carry, batch)
            active = index < n_active
            keep = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_carry, carry)
            return keep, jax.tree.map(lambda m: jnp.where(active, m, jnp.zeros_like(m)), metrics)

        xs = (jnp.arange(k), batches)
        (state, source_state), metrics = jax.lax.scan(one, (state, source_state), xs, unroll=unroll)
        return state, source_state, metrics

    return run
