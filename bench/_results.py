"""Where every benchmark writes its result: ``bench/results/<name>.json``.

One JSON file per benchmark, with what is needed to read the numbers later:
the command that produced them, the date, the machine (CPU count, load
average at the start and the end, JAX backend and devices) and the rows of
its table. ``bench/run_all.py`` (``make bench``) runs every benchmark and
renders these files into one Markdown report.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
_START_LOAD = os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine() -> dict[str, Any]:
    """The machine a number was measured on (imports JAX only if the caller already did)."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_start": _START_LOAD,
        "load_average_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    jax = sys.modules.get("jax")
    if jax is not None:
        info["jax"] = jax.__version__
        info["backend"] = jax.default_backend()
        info["devices"] = [str(d.device_kind) for d in jax.devices()]
    return info


def save(name: str, rows: Sequence[dict[str, Any]], *, summary: dict[str, Any] | None = None,
         notes: str = "", out: str | None = None) -> str:
    """Write ``bench/results/<name>.json`` (or ``out``) and return its path.

    ``rows`` is the benchmark's table, one dict per row with the same keys;
    ``summary`` holds the headline ratios (what the docs quote) and their targets.
    """
    path = out or os.path.join(RESULTS_DIR, f"{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = {
        "name": name,
        "command": " ".join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "summary": summary or {},
        "rows": list(rows),
        "notes": notes,
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=float)
    print(f"wrote {os.path.relpath(path)}")
    return path


def markdown_table(rows: Sequence[dict[str, Any]], digits: int = 3) -> str:
    """``rows`` (dicts with the same keys) as a Markdown table; floats rounded to ``digits`` significant figures."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}g}"
        return str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
