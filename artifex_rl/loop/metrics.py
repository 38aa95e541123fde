"""The metric aggregator: ``(sum, count)`` per key over a logging interval.

Every optimisation step's device metrics are added (a step's scalars, or a
fused call's ``(K,)`` rows); nothing is read from the device until the
interval ends. Then one compiled reduction gives each key's ``(sum, count)``,
and the logged value is ``sum / count`` (the Flax examples' and Lightning's
result-collection form). Ratio metrics (mean return of the episodes finished
in the interval) are ``sum(total) / sum(count)`` of two keys. The unfinished
interval serialises as host ``(sum, count)`` pairs, so a resumed run logs the
same interval means as a straight one.

``fit`` and a hand-written ``train_step`` loop use the same aggregator; in a
hand-written loop the trainer closes an interval every ``log_every_n_steps``
steps itself, and callbacks read it through ``Callback.on_train_batch_end``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.jit
def _sums_and_counts(entries: list[dict[str, Array]]) -> dict[str, tuple[Array, Array]]:
    keys: dict[str, None] = {}
    for entry in entries:
        keys.update(dict.fromkeys(entry))
    out = {}
    for key in keys:
        values = [jnp.ravel(jnp.asarray(e[key], jnp.float32)) for e in entries if key in e]
        flat = jnp.concatenate(values)
        out[key] = (jnp.sum(flat), jnp.asarray(flat.shape[0], jnp.float32))
    return out


class MetricAggregator:
    """Buffers device metrics for one logging interval and reduces them on demand.

    Args:
      ratio_metrics: ``{name: (total_key, count_key)}`` logged as the ratio of
        the two keys' interval sums, omitted when the count is 0.
    """

    def __init__(self, ratio_metrics: Mapping[str, tuple[str, str]] | None = None, raise_on_skipped: bool = False):
        self.ratio_metrics = dict(ratio_metrics or {})
        self.raise_on_skipped = raise_on_skipped
        self._entries: list[dict[str, Array]] = []
        self._carried: dict[str, tuple[float, float]] = {}
        # A finished interval's device means and its step, read once the next call is queued.
        self._pending: tuple[dict[str, tuple[Array, Array]], int] | None = None

    def add(self, metrics: Mapping[str, Array]) -> None:
        """One step's scalars, or ``(K,)`` rows of K fused steps (all rows valid)."""
        self._entries.append(metrics)

    @property
    def has_pending(self) -> bool:
        """Whether a closed interval waits to be read."""
        return self._pending is not None

    @property
    def empty(self) -> bool:
        return not self._entries and not self._carried

    def close_interval(self, step: int) -> None:
        """End the interval at ``step``: dispatch its reduction (not waited for)."""
        if self.empty:
            return
        entries, self._entries = self._entries, []
        self._closed_entries = entries  # kept until read: a skipped step is located in them
        sums = _sums_and_counts(entries) if entries else {}
        for key, (s, c) in self._carried.items():
            if key in sums:
                sums[key] = (sums[key][0] + s, sums[key][1] + c)
            else:
                sums[key] = (jnp.asarray(s, jnp.float32), jnp.asarray(c, jnp.float32))
        self._carried = {}
        self._pending = (sums, step)

    def take_pending(self) -> tuple[dict[str, float], int] | None:
        """The closed interval's host means and step (waits for the device), or ``None``."""
        if self._pending is None:
            return None
        sums, step = self._pending
        self._pending = None
        host = jax.device_get(sums)
        entries, self._closed_entries = getattr(self, "_closed_entries", []), []
        if self.raise_on_skipped and "skipped_step" in host and float(host["skipped_step"][0]) > 0:
            raise _nonfinite_error(entries, step)
        return self._means(host), step

    def _means(self, sums: Mapping[str, tuple[Any, Any]]) -> dict[str, float]:
        means = {k: float(s) / max(float(c), 1.0) for k, (s, c) in sums.items()}
        for name, (total, count) in self.ratio_metrics.items():
            if total in sums and count in sums and float(sums[count][0]) > 0:
                means[name] = float(sums[total][0]) / float(sums[count][0])
        return means

    # ------------------------------------------------------------------ #
    def state_dict(self) -> dict[str, Any]:
        """Host ``{"open": {key: [sum, count]}, "closed": [means, step] | None}`` (JSON)."""
        open_sums = {k: [float(s), float(c)] for k, (s, c) in jax.device_get(self._open_sums()).items()}
        closed = None
        if self._pending is not None:
            sums, step = self._pending
            closed = {"sums": {k: [float(s), float(c)] for k, (s, c) in jax.device_get(sums).items()}, "step": step}
        return {"open": open_sums, "closed": closed}

    def _open_sums(self) -> dict[str, tuple[Any, Any]]:
        sums: dict[str, tuple[Any, Any]] = dict(_sums_and_counts(self._entries)) if self._entries else {}
        for key, (s, c) in self._carried.items():
            prev = sums.get(key, (0.0, 0.0))
            sums[key] = (prev[0] + s, prev[1] + c)
        return sums

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._entries = []
        self._carried = {k: (float(s), float(c)) for k, (s, c) in dict(state.get("open", {})).items()}
        closed = state.get("closed")
        self._pending = None
        if closed:
            sums = {k: (jnp.asarray(s, jnp.float32), jnp.asarray(c, jnp.float32)) for k, (s, c) in closed["sums"].items()}
            self._pending = (sums, int(closed["step"]))

    def reset(self) -> None:
        self._entries, self._carried, self._pending, self._closed_entries = [], {}, None, []


def _nonfinite_error(entries: list[dict[str, Array]], last_step: int) -> FloatingPointError:
    """A FloatingPointError naming the first skipped step of the interval and its first non-finite metric."""
    rows: list[dict[str, float]] = []
    for entry in jax.device_get(entries):
        n = max((jnp.size(v) for v in entry.values()), default=1)
        for i in range(int(n)):
            rows.append({k: float(jnp.ravel(jnp.asarray(v))[i if jnp.size(v) > 1 else 0]) for k, v in entry.items()})
    for i, row in enumerate(rows):
        if row.get("skipped_step", 0.0) > 0:
            step = last_step - len(rows) + i + 1
            bad = [k for k, v in row.items() if not math.isfinite(v)]
            what = f"the first non-finite metric is {bad[0]!r}" if bad else "the new parameters were not finite"
            # In-step value checks of device batches (e.g. invalid_action_frac) say why.
            invalid = [f"{k}={v:g}" for k, v in row.items() if k.startswith("invalid_") and v > 0]
            if invalid:
                what += f"; the batch held invalid values: {', '.join(invalid)}"
            return FloatingPointError(
                f"step {step} produced non-finite values ({what}); its update was not applied, so the "
                "parameters and every saved checkpoint are finite. Set TrainerConfig(nan_policy='skip') "
                "to skip such steps and go on."
            )
    return FloatingPointError(f"a step before {last_step} produced non-finite values (nan_policy='raise')")
