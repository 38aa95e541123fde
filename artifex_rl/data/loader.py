"""A shuffling, resumable batch iterator over in-memory arrays.

:class:`ArrayDataLoader` feeds ``Trainer.fit`` (or any loop) from a dict of
numpy arrays that share their leading axis. Its contract with the trainer:

* ``iter(loader)`` continues the **current** epoch from the current position
  and, once that epoch is exhausted, moves the loader to the next epoch, so a
  loop that calls ``iter`` once per epoch sees epoch 0, 1, 2, ... in order.
* The order of epoch ``e`` is a permutation drawn from
  ``np.random.default_rng([seed, e])``: it depends on nothing but the seed and
  the epoch, so it is the same in a resumed process.
* ``state_dict()`` is ``{"epoch", "position"}`` (plain ints: it is saved in a
  checkpoint's JSON); the position counts the batches already handed out in
  that epoch. ``load_state_dict`` before iterating continues exactly there,
  mid-epoch included. A position equal to ``len(loader)`` (saved right after
  an epoch's last batch) makes the next ``iter`` end that epoch without a batch,
  exactly as the straight run did.

Every batch has the same shape, so a compiled step never retraces: the last
incomplete batch is dropped (``drop_last=True``) or filled up to
``batch_size`` with rows from the start of the epoch's order
(``drop_last=False``); then every batch carries a float32 ``"mask"`` ``(B,)``,
1 on real rows and 0 on the filling, which a loss uses to weight its terms.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

MASK_KEY = "mask"


class ArrayDataLoader:
    """Batches of a dict of arrays, reshuffled every epoch from ``(seed, epoch)``.

    Args:
      arrays: ``{name: array}`` with a common leading size ``N`` (each array
        ``(N, ...)``). Not copied: do not modify them while iterating.
      batch_size: rows per batch, ``B > 0``.
      shuffle: permute the rows each epoch; ``False`` keeps their order.
      seed: seed of the per-epoch permutations.
      drop_last: drop the last ``N % B`` rows of each epoch (``True``), or pad
        the last batch to ``B`` rows and add a ``"mask"`` entry to every batch
        (``False``).

    Iterating yields ``{name: array (B, ...)}`` (numpy), plus ``"mask"``
    float32 ``(B,)`` when ``drop_last=False``.
    """

    def __init__(
        self,
        arrays: Mapping[str, Any],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ):
        if not isinstance(arrays, Mapping) or not arrays:
            raise ValueError(f"arrays must be a non-empty dict of arrays, got {type(arrays).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        converted: dict[str, np.ndarray] = {}
        for name, value in arrays.items():
            if not isinstance(name, str):
                raise ValueError(f"array names must be strings, got {name!r}")
            array = np.asarray(value)
            if array.ndim == 0:
                raise ValueError(f"arrays[{name!r}] is a scalar; every array needs a leading batch axis")
            converted[name] = array
        sizes = {name: a.shape[0] for name, a in converted.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"arrays must share their leading size; got {sizes}")
        if not drop_last and MASK_KEY in converted:
            raise ValueError(
                f"arrays already has a {MASK_KEY!r} entry; drop_last=False adds its own padding mask under that name"
            )
        self._arrays = converted
        self.num_rows = next(iter(sizes.values()))
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        if self.num_rows == 0:
            raise ValueError(f"arrays are empty (leading size 0): {sizes}")
        if len(self) == 0:
            raise ValueError(
                f"batch_size={batch_size} exceeds the {self.num_rows} rows and drop_last=True: "
                "an epoch would have no batch (lower batch_size or set drop_last=False)"
            )
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        """Batches per epoch: ``N // B`` (``drop_last``) or ``ceil(N / B)``."""
        if self.drop_last:
            return self.num_rows // self.batch_size
        return -(-self.num_rows // self.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Row indices of epoch ``epoch`` in the order they are served, int64 ``(N,)``."""
        if not self.shuffle:
            return np.arange(self.num_rows)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_rows)

    def _batch(self, order: np.ndarray, index: int) -> dict[str, np.ndarray]:
        start = index * self.batch_size
        rows = order[start : start + self.batch_size]
        real = len(rows)
        if real < self.batch_size:
            # Filler rows are real rows (valid labels, finite values) that the mask switches off.
            filler = np.resize(order, self.batch_size - real)
            rows = np.concatenate([rows, filler])
        batch = {name: a[rows] for name, a in self._arrays.items()}
        if not self.drop_last:
            mask = np.zeros(self.batch_size, np.float32)
            mask[:real] = 1.0
            batch[MASK_KEY] = mask
        return batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        order = self.epoch_order(self.epoch)
        while self.position < len(self):
            batch = self._batch(order, self.position)
            # Counted before the yield: state_dict() taken while the consumer holds this batch says it was served.
            self.position += 1
            yield batch
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position"}``: where the next ``iter`` continues (plain ints)."""
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (before iterating)."""
        missing = [k for k in ("epoch", "position") if k not in state]
        if missing:
            raise ValueError(f"loader state is missing {missing}; got keys {sorted(state)}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0:
            raise ValueError(f"loader state 'epoch' must be >= 0, got {epoch}")
        if not 0 <= position <= len(self):
            raise ValueError(
                f"loader state 'position' must be in [0, {len(self)}] (batches per epoch), got {position}"
            )
        self.epoch, self.position = epoch, position

    def __repr__(self) -> str:
        shapes = {name: a.shape for name, a in self._arrays.items()}
        return (
            f"ArrayDataLoader({shapes}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, drop_last={self.drop_last})"
        )
