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
import numpy as np

Array = jax.Array


@jax.jit
def _sums_and_counts(entries: list[dict[str, Array]], masks: list[Array | None]) -> dict[str, tuple[Array, Array]]:
    """Each key's ``(sum, count)`` over the entries' rows selected by their masks (``None``: all rows)."""
    keys: dict[str, None] = {}
    for entry in entries:
        keys.update(dict.fromkeys(entry))
    out = {}
    for key in keys:
        total = jnp.zeros((), jnp.float32)
        count = jnp.zeros((), jnp.float32)
        for entry, mask in zip(entries, masks, strict=True):
            if key not in entry:
                continue
            x = jnp.asarray(entry[key], jnp.float32)
            if mask is None:
                total, count = total + jnp.sum(x), count + x.size
            else:  # (K,) rows of a fused call; where, not multiply: a NaN row outside stays out
                rows = jnp.reshape(mask, mask.shape + (1,) * (x.ndim - 1))
                total = total + jnp.sum(jnp.where(rows, x, 0.0))
                count = count + jnp.sum(mask) * (x.size // max(x.shape[0], 1))
        out[key] = (total, count)
    return out


class MetricAggregator:
    """Buffers device metrics for logging intervals and reduces them on demand.

    Args:
      ratio_metrics: ``{name: (total_key, count_key)}`` logged as the ratio of
        the two keys' interval sums, omitted when the count is 0.

    A fused call's ``(K,)`` rows may span several intervals (``add(metrics,
    rows=...)`` takes a row range); closed intervals queue until read, oldest
    first, so ``fit`` can read them once the next call is queued.
    """

    def __init__(self, ratio_metrics: Mapping[str, tuple[str, str]] | None = None, raise_on_skipped: bool = False):
        self.ratio_metrics = dict(ratio_metrics or {})
        self.raise_on_skipped = raise_on_skipped
        self._entries: list[tuple[dict[str, Array], tuple[int, int] | None]] = []
        self._carried: dict[str, tuple[float, float]] = {}
        # Finished intervals: (device sums, step, their entries), read once the next call is queued.
        self._pending: list[tuple[dict[str, tuple[Array, Array]], int, list]] = []

    def add(self, metrics: Mapping[str, Array], rows: tuple[int, int] | None = None) -> None:
        """One step's scalars, or ``(K,)`` rows of K fused steps: all of them, or ``rows=(start, stop)``."""
        self._entries.append((metrics, rows))

    @property
    def has_pending(self) -> bool:
        """Whether a closed interval waits to be read."""
        return bool(self._pending)

    @property
    def pending_steps(self) -> list[int]:
        """The steps of the closed intervals waiting to be read, oldest first."""
        return [step for _, step, _ in self._pending]

    @property
    def empty(self) -> bool:
        return not self._entries and not self._carried

    @staticmethod
    def _reduce(entries: list[tuple[dict[str, Array], tuple[int, int] | None]]) -> dict[str, tuple[Array, Array]]:
        masks = []
        for metrics, rows in entries:
            if rows is None:
                masks.append(None)
            else:  # a host mask: one compiled reduction serves every row range
                index = np.arange(next(iter(jax.tree.leaves(metrics))).shape[0])
                masks.append((index >= rows[0]) & (index < rows[1]))
        return dict(_sums_and_counts([m for m, _ in entries], masks))

    def close_interval(self, step: int) -> None:
        """End the interval at ``step``: dispatch its reduction (not waited for)."""
        if self.empty:
            return
        entries, self._entries = self._entries, []
        sums = self._reduce(entries) if entries else {}
        for key, (s, c) in self._carried.items():
            if key in sums:
                sums[key] = (sums[key][0] + s, sums[key][1] + c)
            else:
                sums[key] = (jnp.asarray(s, jnp.float32), jnp.asarray(c, jnp.float32))
        self._carried = {}
        # The entries are kept until read: a skipped step is located in them.
        self._pending.append((sums, step, entries))

    def take_pending(self) -> tuple[dict[str, float], int] | None:
        """The oldest closed interval's host means and step (waits for the device), or ``None``."""
        if not self._pending:
            return None
        sums, step, entries = self._pending.pop(0)
        host = jax.device_get(sums)
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
        """Host ``{"open": {key: [sum, count]}, "closed": [{"sums", "step"}, ...]}`` (JSON)."""
        open_sums = {k: [float(s), float(c)] for k, (s, c) in jax.device_get(self._open_sums()).items()}
        closed = [
            {"sums": {k: [float(s), float(c)] for k, (s, c) in jax.device_get(sums).items()}, "step": step}
            for sums, step, _ in self._pending
        ]
        return {"open": open_sums, "closed": closed}

    def _open_sums(self) -> dict[str, tuple[Any, Any]]:
        sums: dict[str, tuple[Any, Any]] = self._reduce(self._entries) if self._entries else {}
        for key, (s, c) in self._carried.items():
            prev = sums.get(key, (0.0, 0.0))
            sums[key] = (prev[0] + s, prev[1] + c)
        return sums

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._entries = []
        self._carried = {k: (float(s), float(c)) for k, (s, c) in dict(state.get("open", {})).items()}
        closed = state.get("closed") or []
        if isinstance(closed, Mapping):  # checkpoints written before intervals queued: one interval
            closed = [closed]
        self._pending = [
            (
                {k: (jnp.asarray(s, jnp.float32), jnp.asarray(c, jnp.float32)) for k, (s, c) in c_["sums"].items()},
                int(c_["step"]),
                [],
            )
            for c_ in closed
        ]

    def reset(self) -> None:
        self._entries, self._carried, self._pending = [], {}, []


def _nonfinite_error(entries: list[tuple[dict[str, Array], tuple[int, int] | None]], last_step: int) -> FloatingPointError:
    """A FloatingPointError naming the first skipped step of the interval and its first non-finite metric."""
    rows: list[dict[str, float]] = []
    for entry, span in jax.device_get(entries):
        n = int(max((np.size(v) for v in entry.values()), default=1))
        start, stop = span if span is not None else (0, n)
        for i in range(start, stop):
            rows.append({k: float(np.ravel(np.asarray(v))[i if np.size(v) > 1 else 0]) for k, v in entry.items()})
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
