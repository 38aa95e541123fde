"""``ModelCheckpoint``: periodic, top-k and last checkpoints of a trainer.

Directory layout (one writer per ``dirpath``)::

    dirpath/
      step_00000100/     one complete trainer checkpoint (see artifex_rl.checkpointing)
      step_00000200/
      index.json         which checkpoints are kept, their scores, "last" and "best"

Each ``step_XXXXXXXX`` directory is written atomically by orbax (tmp dir +
rename). ``index.json`` is replaced atomically (write + ``os.replace``) before
each save (listing the checkpoint being written and the ones it will replace)
and again once the save is committed (in the writer thread, for async saves).
Checkpoints that fall out of the top-k are deleted only after the checkpoint
that replaces them is committed, so a
process killed at any moment leaves at least the previous checkpoints intact,
and :meth:`ModelCheckpoint.resolve_checkpoint_path` picks the newest (or best)
*complete* one.

The bookkeeping (kept checkpoints, their scores) is also this callback's
``state_dict``, saved inside every checkpoint, so a resumed run continues
with exactly the top-k it had.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from artifex_rl.events import Callback

if TYPE_CHECKING:
    from artifex_rl.checkpointing import TrainerCheckpointer
    from artifex_rl.trainer import Trainer

INDEX_FILE = "index.json"
_NAME_FORMAT = "step_{step:08d}"


def is_complete_checkpoint(path: str) -> bool:
    # Imported here: orbax takes about a second to import, paid only when checkpointing.
    from artifex_rl.checkpointing import is_complete_checkpoint as check

    return check(path)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Settings of :class:`ModelCheckpoint`.

    Attributes:
      dirpath: directory of the checkpoints (created if missing).
      monitor: metric in ``trainer.callback_metrics`` that ranks checkpoints
        (e.g. ``"mean_reward"``). ``None``: rank by recency.
      mode: ``"min"`` or ``"max"``: which direction of ``monitor`` is better.
      save_top_k: how many of the best checkpoints to keep (the most recent
        ones when ``monitor`` is ``None``); ``-1`` keeps all; ``0`` keeps
        only the last (with ``save_last``).
      save_last: always keep the latest checkpoint too (resume with
        ``fit(ckpt_path="last")``).
      every_n_train_steps: save every this many global steps. When set,
        ``every_n_epochs`` is ignored (as in Lightning).
      every_n_epochs: save at the end of every this many epochs (``None`` or
        ``0``: never at epoch ends).
      async_save: write checkpoints in a background thread; the training
        thread only waits for the device-to-host copy of the state.

    A checkpoint is also saved when training ends (unless that step was just
    saved). The monitored value is the latest logged one: for a step-based
    save that is not on a logging step it lags by up to
    ``log_every_n_steps`` steps.
    """

    dirpath: str
    monitor: str | None = None
    mode: str = "min"
    save_top_k: int = 1
    save_last: bool = True
    every_n_train_steps: int | None = None
    every_n_epochs: int | None = 1
    async_save: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"CheckpointConfig.mode must be 'min' or 'max', got {self.mode!r}")
        if not isinstance(self.save_top_k, int) or self.save_top_k < -1:
            raise ValueError(f"CheckpointConfig.save_top_k must be an int >= -1, got {self.save_top_k!r}")
        if self.save_top_k == 0 and not self.save_last:
            raise ValueError("CheckpointConfig with save_top_k=0 and save_last=False would keep nothing")
        for name in ("every_n_train_steps", "every_n_epochs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"CheckpointConfig.{name} must be a non-negative int or None, got {value!r}")


class ModelCheckpoint(Callback):
    """Saves trainer checkpoints, keeping the top-k by a metric and always the latest.

    Resume with ``trainer.fit(..., callbacks=[ModelCheckpoint(cfg)], ckpt_path="last")``
    (or ``"best"``), also in a new process.

    Attributes:
      best_model_path: path of the best kept checkpoint (the latest when no
        ``monitor``), or ``None``.
      best_model_score: its monitored value.
      last_model_path: path of the latest checkpoint, or ``None``.
    """

    runs_last = True

    @property
    def waits_for_logs(self) -> bool:
        # Only a monitored metric is read from the logs; without one, fit may
        # keep logging one call behind (pending intervals are saved too).
        return self.config.monitor is not None

    def __init__(self, config: CheckpointConfig):
        if not isinstance(config, CheckpointConfig):
            raise TypeError(f"ModelCheckpoint expects a CheckpointConfig, got {type(config).__name__}")
        self.config = config
        self.dirpath = os.path.abspath(config.dirpath)
        # Kept checkpoints in save order: {"name", "step", "score"}.
        self._kept: list[dict[str, Any]] = []
        self._last: str | None = None
        self._checkpointer: TrainerCheckpointer | None = None

    # ------------------------------------------------------------------ #
    # Public views
    # ------------------------------------------------------------------ #
    @property
    def best_model_path(self) -> str | None:
        best = self._best(self._kept)
        return self._path(best["name"]) if best else None

    @property
    def best_model_score(self) -> float | None:
        best = self._best(self._kept)
        return best["score"] if best else None

    @property
    def last_model_path(self) -> str | None:
        return self._path(self._last) if self._last else None

    @property
    def best_k_models(self) -> dict[str, float | None]:
        """``{path: score}`` of every kept checkpoint."""
        return {self._path(e["name"]): e["score"] for e in self._kept}

    def resolve_checkpoint_path(self, spec: str) -> str | None:
        """Path of the ``"last"`` or ``"best"`` *complete* checkpoint, or ``None`` if there is none.

        Uses this callback's bookkeeping when it has any (same process),
        else ``dirpath/index.json`` (a new process).
        """
        if spec not in ("last", "best"):
            return None
        if self._kept:
            self._finish_pending()
            entries = list(self._kept)
        else:
            index = self._read_index()
            if index is None:
                return None
            entries = list(index.get("checkpoints", [])) + list(index.get("superseded", []))
        complete = [e for e in entries if is_complete_checkpoint(self._path(e["name"]))]
        if not complete:
            return None
        if spec == "last" or self.config.monitor is None:
            chosen = max(complete, key=lambda e: e["step"])
        else:
            chosen = self._best(complete)
        return self._path(chosen["name"]) if chosen else None

    # ------------------------------------------------------------------ #
    # Hooks
    # ------------------------------------------------------------------ #
    def next_boundary_step(self, trainer: Trainer, step: int) -> int | None:
        # Fused steps run their hooks at the chunk's end: a chunk ends on every save step.
        every = self.config.every_n_train_steps
        return (step // every + 1) * every if every else None

    def on_train_begin(self, trainer: Trainer) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        # Leftovers of a writer killed mid-save; never read, safe to drop.
        for tmp in [] if _follower() else glob.glob(os.path.join(self.dirpath, "step_*.orbax-checkpoint-tmp*")):
            shutil.rmtree(tmp, ignore_errors=True)
        self._ensure_checkpointer()

    def on_train_batch_end(self, trainer: Trainer, metrics: Mapping[str, Any], step: int) -> None:
        every = self.config.every_n_train_steps
        if every and trainer.global_step % every == 0:
            self._save(trainer, self._score(trainer, metrics))

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: Mapping[str, float]) -> None:
        every = self.config.every_n_epochs
        if self.config.every_n_train_steps is None and every and (epoch + 1) % every == 0:
            self._save(trainer, self._score(trainer, None))

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.global_step > 0:
            self._save(trainer, self._score(trainer, None))
        self._close()

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        from artifex_rl.loop.fit_loop import TrainingInterrupted

        if isinstance(exception, TrainingInterrupted) and trainer.global_step > 0:
            # Interrupted between chunks: the state is consistent, keep it.
            self._save(trainer, self._score(trainer, None))
        # Otherwise the state may be broken: do not save it, but commit the save in flight.
        self._close()

    def state_dict(self) -> dict[str, Any]:
        return {
            "checkpoints": [dict(e) for e in self._kept],
            "last": self._last,
            "monitor": self.config.monitor,
            "mode": self.config.mode,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._kept = [dict(e) for e in state.get("checkpoints", [])]
        self._last = state.get("last")

    # ------------------------------------------------------------------ #
    # Internals
    # ------------------------------------------------------------------ #
    def _path(self, name: str) -> str:
        return os.path.join(self.dirpath, name)

    def _ensure_checkpointer(self) -> TrainerCheckpointer:
        if self._checkpointer is None:
            from artifex_rl.checkpointing import TrainerCheckpointer

            self._checkpointer = TrainerCheckpointer(async_save=self.config.async_save)
        return self._checkpointer

    def _score(self, trainer: Trainer, step_metrics: Mapping[str, Any] | None) -> float | None:
        """The monitored value: the latest logged one in ``fit``, the step's own in a hand-written loop."""
        monitor = self.config.monitor
        if monitor is None:
            return None
        logged = trainer.callback_metrics
        if monitor in logged:
            return float(logged[monitor])
        if logged:
            raise KeyError(
                f"ModelCheckpoint monitors {monitor!r}, which is not among the logged metrics "
                f"{sorted(logged)}"
            )
        return None  # nothing logged yet: kept only as "last"

    def _rank_key(self, entry: Mapping[str, Any]) -> tuple[float, int]:
        """Smaller is better; ties go to the earlier checkpoint."""
        score = entry["score"]
        return (score if self.config.mode == "min" else -score), entry["step"]

    def _best(self, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        if self.config.monitor is None:
            return max(entries, key=lambda e: e["step"]) if entries else None
        scored = [e for e in entries if e["score"] is not None and math.isfinite(e["score"])]
        return min(scored, key=self._rank_key) if scored else None

    def _retain(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The entries to keep: the top-k, plus the latest when ``save_last``."""
        k = self.config.save_top_k
        if k == -1:
            return entries
        if self.config.monitor is None:
            ranked = sorted(entries, key=lambda e: -e["step"])
        else:
            # Non-finite or missing scores never enter the top-k.
            ranked = sorted(
                (e for e in entries if e["score"] is not None and math.isfinite(e["score"])),
                key=self._rank_key,
            )
        keep = {e["name"] for e in ranked[:k]}
        if self.config.save_last:
            keep.add(entries[-1]["name"])
        return [e for e in entries if e["name"] in keep]

    def _save(self, trainer: Trainer, score: float | None) -> None:
        name = _NAME_FORMAT.format(step=trainer.global_step)
        if self._last == name:
            return  # this step is already saved (e.g. a step save just before train end)
        checkpointer = self._ensure_checkpointer()
        checkpointer.wait_until_finished()  # the previous save's index and deletions are done
        entry = {"name": name, "step": trainer.global_step, "score": score}
        # A same-named entry can only come from an abandoned timeline (resumed from an
        # older checkpoint); the new save replaces it.
        entries = [e for e in self._kept if e["name"] != name] + [entry]
        kept = self._retain(entries)
        if name not in {e["name"] for e in kept}:
            return  # not in the top-k and save_last is off: nothing to write
        superseded = [e for e in self._kept if e not in kept and e["name"] != name]
        self._kept, self._last = kept, name
        # Before the write, the index lists the checkpoint being written and the ones it
        # supersedes (still on disk); resolve_checkpoint_path picks among the complete ones.
        self._write_index(self._index(superseded))
        committed = self._index([])
        doomed = [self._path(e["name"]) for e in superseded]

        def on_commit() -> None:  # in the writer thread when async
            self._write_index(committed)
            for path in [] if _follower() else doomed:
                shutil.rmtree(path, ignore_errors=True)

        # The metadata saved with the checkpoint includes this callback's new state.
        checkpointer.save(trainer, self._path(name), overwrite=True, on_commit=on_commit)

    def _finish_pending(self) -> None:
        """Wait for the in-flight save and its index update and deletions."""
        if self._checkpointer is not None:
            self._checkpointer.wait_until_finished()

    def _close(self) -> None:
        if self._checkpointer is not None:
            checkpointer, self._checkpointer = self._checkpointer, None
            checkpointer.close()

    def _index(self, superseded: list[dict[str, Any]]) -> dict[str, Any]:
        """A snapshot of the bookkeeping as written to ``index.json``."""
        best = self._best(self._kept)
        return {
            "format_version": 1,
            "monitor": self.config.monitor,
            "mode": self.config.mode,
            "last": self._last,
            "best": best["name"] if best else None,
            "best_score": best["score"] if best else None,
            "checkpoints": [dict(e) for e in self._kept],
            "superseded": [dict(e) for e in superseded],
        }

    def _write_index(self, index: dict[str, Any]) -> None:
        if _follower():
            return
        os.makedirs(self.dirpath, exist_ok=True)
        path = os.path.join(self.dirpath, INDEX_FILE)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(index, f, indent=1)
        os.replace(tmp, path)  # atomic: readers see the old or the new index, never half of one

    def _read_index(self) -> dict[str, Any] | None:
        path = os.path.join(self.dirpath, INDEX_FILE)
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None


def _follower() -> bool:
    """A process other than 0 of a multi-process run: it saves its shards (orbax) but leaves
    the index and the deletion of superseded checkpoints to process 0."""
    import jax

    return jax.process_index() != 0
