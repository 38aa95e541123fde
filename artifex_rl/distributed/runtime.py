"""Several processes (hosts) on JAX's own distributed runtime.

Every host runs the same command; ``initialize`` connects them through
``jax.distributed.initialize``, after which ``jax.devices()`` lists every
process's devices and a mesh over them spans the hosts. Settings come from
arguments or, when those are ``None``, from environment variables::

    ARTIFEX_COORDINATOR=10.0.0.1:1234   (host:port of process 0)
    ARTIFEX_NUM_PROCESSES=2
    ARTIFEX_PROCESS_ID=0                (this process, 0 .. N-1)

(``artifex-rl train ... --coordinator HOST:PORT --num-processes N
--process-id I`` sets the same.) On the CPU backend, cross-process
collectives need ``jax_cpu_collectives_implementation="gloo"``, which
``initialize`` sets; GPUs and TPUs bring their own.

Only process 0 writes logs, plots and summaries (:func:`is_main_process`);
every process takes part in checkpoint saves, as orbax requires.
"""

from __future__ import annotations

import os

import jax

ENV_COORDINATOR = "ARTIFEX_COORDINATOR"
ENV_NUM_PROCESSES = "ARTIFEX_NUM_PROCESSES"
ENV_PROCESS_ID = "ARTIFEX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an int, got {value!r}") from None


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Join a multi-process run (before any other JAX call); returns whether one was joined.

    Args:
      coordinator: ``"host:port"`` of process 0 (default ``$ARTIFEX_COORDINATOR``).
      num_processes: processes in the run (default ``$ARTIFEX_NUM_PROCESSES``).
      process_id: this process's index (default ``$ARTIFEX_PROCESS_ID``).

    Returns:
      ``False`` (and nothing happens) when no coordinator is given: a
      single-process run.

    Raises:
      ValueError: a coordinator without a process count or id, or an id out of range.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if coordinator is None:
        return False
    if num_processes is None or process_id is None:
        raise ValueError(
            f"a multi-process run at coordinator {coordinator!r} needs num_processes and process_id "
            f"(--num-processes/--process-id or ${ENV_NUM_PROCESSES}/${ENV_PROCESS_ID}); "
            f"got num_processes={num_processes}, process_id={process_id}"
        )
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    if ":" not in coordinator:
        raise ValueError(f"coordinator must be 'host:port', got {coordinator!r}")
    # CPU collectives across processes go through gloo (the default has none).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    return True


def is_main_process() -> bool:
    """Whether this process writes logs, plots and summaries (process 0)."""
    return jax.process_index() == 0


__all__ = ["ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID", "initialize", "is_main_process"]
