"""A persistent compilation cache for the command line: a recipe's programs compile once per machine.

JAX can keep compiled XLA executables on disk and load them in a later
process whose program, compiler options and jaxlib are the same
(``jax_compilation_cache_dir``). ``artifex-rl train`` turns that on by
default, so a second run of a recipe (another seed, a resumed run, the same
command tomorrow) skips XLA's compilation and pays only tracing and
lowering: ``cartpole-ppo`` measured 10.1 s of trace + lower + compile in its
first run and 3.5-3.8 s in the next ones (``docs/cli.md``). The library itself never
enables it; a Python user sets ``jax.config.update("jax_compilation_cache_dir", ...)``.

Where: ``--compile-cache DIR`` (``off`` disables it), else the environment
variable ``ARTIFEX_RL_COMPILE_CACHE`` (same values), else
``$XDG_CACHE_HOME/artifex_rl/jax`` (``~/.cache/artifex_rl/jax``). A cache
directory the user already gave JAX (``JAX_COMPILATION_CACHE_DIR``) is left
as it is. The directory grows with every new program (tens of kB to a few
MB each); deleting it only costs the next runs their first compilation.
"""

from __future__ import annotations

import os
import warnings

import jax

#: Environment variable read when ``--compile-cache`` is not given.
ENV_VAR = "ARTIFEX_RL_COMPILE_CACHE"
_OFF = {"off", "none", "no", "0", "false", ""}
#: Programs that compile faster than this are not written (the many tiny
#: eager-op programs would only add files).
MIN_COMPILE_SECONDS = 0.1


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/artifex_rl/jax``, ``~/.cache/artifex_rl/jax`` without it."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "artifex_rl", "jax")


def resolve_cache_dir(option: str | None) -> str | None:
    """The cache directory for ``--compile-cache option``: the option, else the environment, else the default.

    ``None`` when caching is off (``off``, ``none``, ``no``, ``0``, ``false``).
    """
    value = option if option is not None else os.environ.get(ENV_VAR)
    if value is None:
        return default_cache_dir()
    return None if value.strip().lower() in _OFF else os.path.expanduser(value)


def enable_compile_cache(option: str | None) -> str | None:
    """Point JAX's persistent compilation cache at the resolved directory; returns it (``None``: off).

    Must run before the first compilation of the process. Leaves a cache
    directory the user configured through JAX (``JAX_COMPILATION_CACHE_DIR``)
    alone and returns it.
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    path = resolve_cache_dir(option)
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:  # a read-only home must not stop a run: it compiles as without a cache
        warnings.warn(f"compilation cache off: cannot create {path!r} ({e}); pass --compile-cache DIR or off",
                      stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path
