"""Host-side helpers shared by the logging callbacks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def host_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Host floats of the scalar numeric entries of ``metrics`` (device arrays pulled in one transfer).

    Used by hand-written-loop logging, where ``on_train_batch_end`` receives
    the step's device scalars; non-scalar entries are skipped.
    """
    host = jax.device_get(dict(metrics))
    out = {}
    for key, value in host.items():
        arr = np.asarray(value)
        if arr.size == 1 and (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            out[key] = float(arr.reshape(()))
    return out


def json_compatible(obj: Any) -> Any:
    """``obj`` as plain JSON types: numpy values become numbers/lists, anything else its ``repr``.

    For run configs that may hold objects (a reward function in an RL config).
    """

    def default(value: Any) -> Any:
        if isinstance(value, (np.generic, np.ndarray, jax.Array)):
            return np.asarray(value).tolist()
        return repr(value)

    return json.loads(json.dumps(obj, default=default))
