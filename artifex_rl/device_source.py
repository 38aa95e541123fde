"""Data sources whose batches are made on the device by a pure function of the policy.

A rollout source acts with the *current* parameters, so ``fit`` cannot pull
K of its batches ahead and stack them (they would all come from the old
policy). A source that can describe its batch-making as a pure JAX function
lets ``fit`` (with ``steps_per_execution = K > 1``) run K rounds of
"make a batch with the current parameters, then update on it" inside ONE
compiled ``lax.scan``. The results are those of K alternating calls; only
the per-call cost of the runtime is paid once instead of 2K times (on
XLA:CPU that per-call cost is a large share of a small model's iteration).

The protocol, duck-typed (see :class:`artifex_rl.envs.GymnaxRolloutSource`):

``device_batch_fn(graphdef) -> fn``
    ``fn(params, model_state, source_state) -> (batch, new_source_state)``,
    pure and traceable. Must return the *same* function object for the same
    ``graphdef`` (it is a static argument of the compiled call: a new object
    would compile again).
``source_state`` (attribute, read and assigned)
    the pytree of device arrays ``fn`` threads from batch to batch (e.g. the
    environments' state and the PRNG key). ``fit`` reads it before a fused
    call and assigns the new one after.
``advance(n)``
    records that ``n`` batches were made on the device (counters only).
``__len__``
    the number of batches per epoch; raising ``TypeError`` means an endless
    source (``fit`` then stops at ``max_steps``). A source without
    ``__len__`` is not fused.

``fit`` fuses a source only if its ``trainer`` attribute (when it has one)
is the trainer being fitted: a source that acts with another trainer's
policy is read like any dataloader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

BatchFn = Callable[[Any, Any, Any], tuple[dict[str, Any], Any]]


@runtime_checkable
class DeviceBatchSource(Protocol):
    """A source whose next batch is ``fn(params, model_state, source_state)`` on the device."""

    source_state: Any

    def device_batch_fn(self, graphdef: Any) -> BatchFn: ...

    def advance(self, n: int) -> None: ...


def is_device_batch_source(obj: Any) -> bool:
    """Whether ``fit`` can fuse batch-making into its compiled steps for ``obj``."""
    return isinstance(obj, DeviceBatchSource)
