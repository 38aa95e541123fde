"""``TensorBoardLogger``: TensorBoard event files without TensorFlow (via ``tensorboardX``).

Install with ``pip install 'artifex_rl[tensorboard]'`` and view with
``tensorboard --logdir <log_dir>`` (the viewer is a separate install; the
logger itself never imports TensorFlow or ``tensorboard``).

What it writes, against the trainer's global step:

* **scalars**: every numeric entry of each ``on_log`` (interval means, so
  logging costs no extra device sync);
* **hyper-parameters**: ``hparams`` (e.g. a recipe's resolved settings) and
  the trainer's class and config, flattened to ``"section/key"`` entries,
  once as the HParams plugin's session start (its dashboard lists every
  logged scalar as a metric) and once as a JSON ``config`` text entry;
* **images**: ``log_images(name, images, step, value_range=(0, 1))``, a
  sample grid built from ``(N, H, W)`` or ``(N, H, W, C)`` images (the digits
  models' samples in ``[-1, 1]`` take ``value_range=(-1, 1)``) -- the protocol a sampling
  callback uses, as :class:`~artifex_rl.callbacks.SampleTableLogger` calls
  ``log_table`` on every callback that has one;
* **tables**: ``log_table(name, columns, rows, step)`` as a markdown text
  entry (so the language-model recipes' decoded samples appear under Text).

A failure of the logger (``tensorboardX`` missing, an unwritable directory, a
write that raises) logs one warning and turns the callback into a no-op;
training goes on.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from artifex_rl.callbacks._host import json_compatible
from artifex_rl.events import Callback

if TYPE_CHECKING:
    from artifex_rl.trainer import Trainer

_log = logging.getLogger(__name__)


def image_grid(
    images: Any, ncols: int | None = None, pad: int = 1, value_range: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    """Tile ``images`` into one ``(H', W', C)`` uint8 image, row-major, ``pad`` pixels apart.

    Args:
      images: ``(N, H, W)`` or ``(N, H, W, C)`` with ``C`` in 1, 3, 4; floats
        in ``value_range`` (clipped to it) or uint8 (taken as is).
      ncols: images per row (default ``ceil(sqrt(N))``).
      pad: padding between images (and around them), in pixels, value 0.
      value_range: ``(low, high)`` of float images, mapped to 0..255
        (``(-1, 1)`` for the digits models' samples).

    Returns:
      ``(rows * (H + pad) + pad, ncols * (W + pad) + pad, C)`` uint8.
    """
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[0] == 0 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"images must have shape (N, H, W) or (N, H, W, C) with N >= 1 and C in (1, 3, 4), "
            f"got {np.shape(images)}"
        )
    if arr.dtype != np.uint8:
        low, high = value_range
        if not high > low:
            raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
        scaled = (np.clip(arr.astype(np.float64), low, high) - low) / (high - low)
        arr = np.round(scaled * 255.0).astype(np.uint8)
    n, h, w, c = arr.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def flatten_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, float | int | str | bool]:
    """Nested settings as flat ``{"a/b": value}`` with TensorBoard's types (others as JSON text)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, f"{name}/"))
        elif value is None:
            continue
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(json_compatible(value))
    return flat


class TensorBoardLogger(Callback):
    """Writes scalars, hyper-parameters, sample grids and tables as TensorBoard event files.

    Args:
      log_dir: directory of the event files (created if needed).
      hparams: settings to record besides the trainer's config (e.g. a
        recipe's resolved run config); nested mappings are flattened.
      flush_secs: how often the writer flushes to disk in the background.

    Pure logger (``log_may_lag = True``): ``on_log`` only records.
    """

    log_may_lag = True
    main_process_only = True  # several processes: process 0 writes

    def __init__(self, log_dir: str, *, hparams: Mapping[str, Any] | None = None, flush_secs: int = 30):
        self.log_dir = str(log_dir)
        self.hparams = dict(hparams or {})
        self.flush_secs = int(flush_secs)
        self.writer: Any = None
        self._disabled = False
        self._session_started = False

    # ------------------------------------------------------------------ #
    # Hooks
    # ------------------------------------------------------------------ #
    def on_train_begin(self, trainer: Trainer) -> None:
        if self._disabled or not self._open():
            return
        if self._session_started:
            return
        config = json_compatible(
            {**self.hparams, "trainer": {"class": type(trainer).__name__, **trainer.config.to_dict()}}
        )
        try:
            from tensorboardX.summary import hparams

            # Only the session start: without an experiment summary TensorBoard's HParams
            # dashboard infers its metrics from every scalar tag of the run.
            _, start, _ = hparams(flatten_hparams(config), {})
            self.writer.file_writer.add_summary(start, trainer.global_step)
            text = "```json\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```"
            self.writer.add_text("config", text, trainer.global_step)
            self._session_started = True
        except Exception as exc:  # noqa: BLE001 - TensorBoard must never stop training
            self._fail("writing the hyper-parameters", exc)

    def on_log(self, trainer: Trainer, metrics: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        try:
            for key, value in metrics.items():
                if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, float(value), int(step))
        except Exception as exc:  # noqa: BLE001
            self._fail("add_scalar", exc)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.writer is not None and self._session_started:
            try:
                from tensorboardX.summary import hparams

                self.writer.file_writer.add_summary(hparams({}, {})[2], trainer.global_step)
            except Exception as exc:  # noqa: BLE001
                self._fail("writing the session end", exc)
        self._close()

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        self._close()

    # ------------------------------------------------------------------ #
    # Extras for other callbacks and trainers
    # ------------------------------------------------------------------ #
    def log_images(
        self,
        name: str,
        images: Any,
        step: int,
        *,
        ncols: int | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        """Log ``images`` (``(N, H, W[, C])``, floats in ``value_range`` or uint8) as one grid at ``step``.

        A bad shape raises ``ValueError`` (a caller's bug, not a logger failure).
        """
        if self.writer is None:
            return
        grid = image_grid(images, ncols, value_range=value_range)
        try:
            self.writer.add_image(name, grid, int(step), dataformats="HWC")
        except Exception as exc:  # noqa: BLE001
            self._fail("add_image", exc)

    def log_table(
        self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int | None = None
    ) -> None:
        """Log a small table as a markdown text entry at ``step``."""
        if self.writer is None:
            return

        def cell(value: Any) -> str:
            return str(value).replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
        try:
            self.writer.add_text(name, "\n".join(lines), None if step is None else int(step))
        except Exception as exc:  # noqa: BLE001
            self._fail("add_text", exc)

    # ------------------------------------------------------------------ #
    # Internals
    # ------------------------------------------------------------------ #
    def _open(self) -> bool:
        if self.writer is not None:
            return True
        try:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(self.log_dir, flush_secs=self.flush_secs)
        except Exception as exc:  # noqa: BLE001 - ImportError included
            hint = " (pip install 'artifex_rl[tensorboard]')" if isinstance(exc, ImportError) else ""
            self._fail(f"opening {self.log_dir}{hint}", exc)
            return False
        return True

    def _close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            return
        try:
            writer.close()
        except Exception as exc:  # noqa: BLE001
            self._fail("close", exc)

    def _fail(self, what: str, exc: Exception) -> None:
        """Warn once and switch the logger off for the rest of its life."""
        if not self._disabled:
            _log.warning(
                "TensorBoard logging disabled: %s failed with %s: %s (training continues)",
                what,
                type(exc).__name__,
                exc,
            )
        self._disabled = True
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001, S110 - already reported once
                pass


__all__ = ["TensorBoardLogger", "flatten_hparams", "image_grid"]
