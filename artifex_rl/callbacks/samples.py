"""``SampleTableLogger``: a few decoded generations every N logs, to a file and to W&B.

Reward curves say *that* a language model improves; a handful of decoded
completions says *how* (and catches reward hacking early). Every
``every_n_logs``-th ``on_log`` this callback takes the last step's
generations, decodes ``num_rows`` of them with the task's tokenizer and

* appends one JSON line per row to ``<run_dir>/samples.jsonl``:
  ``{"step", "prompt", "completion", "reward"}`` (completion text up to and
  including EOS; ``reward`` is ``null`` when the step has none);
* calls ``log_table("samples", columns, rows)`` on every callback that has
  one (e.g. :class:`~artifex_rl.callbacks.WandbLoggerCallback`).

Where the generations come from, in order of preference:

1. ``trainer.last_outputs`` with ``completions (B', N)`` and optional
   ``completion_mask`` and ``rewards (B',)`` -- online GRPO. The prompts are
   the last batch's ``observations``/``prompts (B, P)``, each repeated
   ``B' / B`` times (GRPO repeats every prompt ``G`` times, consecutively);
2. the last batch itself: ``actions (B, N)`` (REINFORCE/offline GRPO) or
   ``chosen (B, N)`` (DPO), with its ``rewards`` when present.

Reading the arrays forces a device sync, which is why it happens only every
``every_n_logs`` logging steps, never per step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import jax
import numpy as np

from artifex_rl.events import Callback

if TYPE_CHECKING:
    from artifex_rl.trainer import Trainer

COLUMNS = ("step", "prompt", "completion", "reward")


class Decoder(Protocol):
    """What the callback needs from a tokenizer (e.g. :class:`artifex_rl.tasks.DigitTokenizer`)."""

    def decode(self, ids: Any, *, stop_at_eos: bool = False) -> str: ...


class SampleTableLogger(Callback):
    """Decode and record ``num_rows`` generations every ``every_n_logs`` logs.

    Args:
      tokenizer: has ``decode(ids, stop_at_eos=...)``.
      run_dir: where ``samples.jsonl`` goes; ``None``: no file (tables only).
      every_n_logs: record on every this-many-th ``on_log`` call (the first
        log included), so the interval in steps is ``every_n_logs *
        log_every_n_steps``.
      num_rows: rows per table (the first ``num_rows`` generations: with GRPO
        these are the ``G`` samples of the first prompt(s), which shows the
        spread within a group).
      table_name: name of the logged table.
    """

    def __init__(
        self,
        tokenizer: Decoder,
        run_dir: str | None = None,
        *,
        every_n_logs: int = 5,
        num_rows: int = 8,
        table_name: str = "samples",
    ):
        if every_n_logs < 1:
            raise ValueError(f"every_n_logs must be >= 1, got {every_n_logs}")
        if num_rows < 1:
            raise ValueError(f"num_rows must be >= 1, got {num_rows}")
        self.tokenizer = tokenizer
        self.run_dir = run_dir
        self.every_n_logs = every_n_logs
        self.num_rows = num_rows
        self.table_name = table_name
        self._logs_seen = 0
        self._last_batch: Mapping[str, Any] | None = None

    @property
    def path(self) -> str | None:
        return None if self.run_dir is None else os.path.join(self.run_dir, "samples.jsonl")

    def on_train_batch_start(self, trainer: Trainer, batch: Mapping[str, Any], step: int) -> None:
        self._last_batch = batch  # a reference only: nothing is read here

    def on_log(self, trainer: Trainer, metrics: Mapping[str, float], step: int) -> None:
        self._logs_seen += 1
        if (self._logs_seen - 1) % self.every_n_logs:
            return
        rows = self.sample_rows(trainer, step)
        if not rows:
            return
        if self.path is not None:
            os.makedirs(self.run_dir, exist_ok=True)
            with open(self.path, "a") as f:
                f.writelines(json.dumps(dict(zip(COLUMNS, row, strict=True))) + "\n" for row in rows)
        for cb in trainer.callbacks:
            log_table = getattr(cb, "log_table", None)
            if cb is not self and callable(log_table):
                log_table(self.table_name, list(COLUMNS), rows, step=step)

    def sample_rows(self, trainer: Trainer, step: int) -> list[list[Any]]:
        """``[step, prompt, completion, reward]`` rows of the last step (empty if nothing to show)."""
        found = self._find_generations(trainer)
        if found is None:
            return []
        prompts, completions, mask, rewards = jax.device_get(found)  # one transfer
        completions = np.asarray(completions)
        n = min(self.num_rows, completions.shape[0])
        repeat = _repeat_factor(prompts, completions.shape[0])
        rows = []
        for i in range(n):
            prompt = "" if repeat is None else self.tokenizer.decode(np.asarray(prompts)[i // repeat])
            ids = completions[i] if mask is None else completions[i][np.asarray(mask)[i] > 0]
            completion = self.tokenizer.decode(ids, stop_at_eos=True)
            reward = None if rewards is None else float(np.asarray(rewards)[i])
            rows.append([int(step), prompt, completion, reward])
        return rows

    def _find_generations(self, trainer: Trainer) -> tuple[Any, Any, Any, Any] | None:
        batch = self._last_batch or {}
        prompts = batch.get("observations", batch.get("prompts"))
        outputs = trainer.last_outputs or {}
        if "completions" in outputs:
            return prompts, outputs["completions"], outputs.get("completion_mask"), outputs.get("rewards")
        for key, mask_key in (("actions", "completion_mask"), ("chosen", "chosen_mask")):
            if key in batch and np.ndim(batch[key]) == 2:
                return prompts, batch[key], batch.get(mask_key), batch.get("rewards")
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"logs_seen": self._logs_seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._logs_seen = int(state.get("logs_seen", 0))


def _repeat_factor(prompts: Any, num_completions: int) -> int | None:
    """How many consecutive completions share each prompt, or ``None`` if the prompts don't fit."""
    if prompts is None or np.ndim(prompts) != 2 or np.shape(prompts)[0] == 0:
        return None
    b = np.shape(prompts)[0]
    return num_completions // b if num_completions % b == 0 else None


__all__ = ["SampleTableLogger"]
