"""``MetricsLogger``: every logged step to ``metrics.jsonl`` (+ CSV and a PNG of the curves).

Files under ``run_dir``:

* ``metrics.jsonl`` -- one JSON object per logged step, ``{"step": 10, "loss": ...}``,
  flushed per line (a crash loses nothing already logged). On train begin,
  rows with ``step > trainer.global_step`` are dropped (they belong to a
  run that is being resumed from an earlier checkpoint, or replaced by a
  fresh run); the rest are kept and new rows appended.
* ``metrics.csv`` -- the same rows as a table (union of all keys), written at
  train end and on an exception.
* ``metrics.png`` -- one subplot per main metric (loss, mean_reward,
  episode_return, ... whatever is present), written at train end and on an
  exception (matplotlib's Agg canvas; no global pyplot state is touched).
* ``parameters.txt`` -- the ``clu.parameter_overview`` table of the
  parameters, written at train begin (and logged at INFO level).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from artifex_rl.events import Callback

if TYPE_CHECKING:
    from artifex_rl.trainer import Trainer

_log = logging.getLogger(__name__)

#: Curves plotted when present (in this order) unless ``plot_keys`` is given.
DEFAULT_PLOT_KEYS = (
    "loss",
    "mean_reward",
    "episode_return",
    "policy_loss",
    "value_loss",
    "kl_divergence",
    "entropy",
    "reward_margin",
    "accuracy",
    "grad_norm",
)


def _read_rows(path: str) -> list[dict[str, Any]]:
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a line cut short by a crash: everything after it is suspect
    except FileNotFoundError:
        pass
    return rows


class MetricsLogger(Callback):
    """Writes logged metrics to ``run_dir`` as JSON lines, CSV and a PNG plot.

    Args:
      run_dir: output directory (created if missing).
      plot: write ``metrics.png`` at the end.
      plot_keys: metrics to plot (default: those of :data:`DEFAULT_PLOT_KEYS`
        present, at most ``max_plots``).
      write_csv: write ``metrics.csv`` at the end.
      parameter_overview: write the parameter table to ``parameters.txt``.
      log_every_n_steps: logging interval in a hand-written loop (default:
        ``trainer.config.log_every_n_steps``); ``fit`` logs at its own interval.
      max_plots: most subplots when ``plot_keys`` is not given.
    """

    log_may_lag = True  # on_log only records (metrics, step)
    main_process_only = True  # several processes: process 0 writes

    def __init__(
        self,
        run_dir: str,
        plot: bool = True,
        plot_keys: Sequence[str] | None = None,
        *,
        write_csv: bool = True,
        parameter_overview: bool = True,
        log_every_n_steps: int | None = None,
        max_plots: int = 4,
    ):
        self.run_dir = run_dir
        self.plot = plot
        self.plot_keys = tuple(plot_keys) if plot_keys is not None else None
        self.write_csv = write_csv
        self.parameter_overview = parameter_overview
        self.log_every_n_steps = log_every_n_steps
        self.max_plots = max_plots
        self._file: IO[str] | None = None

    @property
    def jsonl_path(self) -> str:
        return os.path.join(self.run_dir, "metrics.jsonl")

    @property
    def csv_path(self) -> str:
        return os.path.join(self.run_dir, "metrics.csv")

    @property
    def plot_path(self) -> str:
        return os.path.join(self.run_dir, "metrics.png")

    def rows(self) -> list[dict[str, Any]]:
        """Every row of ``metrics.jsonl``."""
        if self._file is not None:
            self._file.flush()
        return _read_rows(self.jsonl_path)

    # ------------------------------------------------------------------ #
    # Hooks
    # ------------------------------------------------------------------ #
    def on_train_begin(self, trainer: Trainer) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        self._close_file()
        if os.path.exists(self.jsonl_path):
            # Rewritten (atomically) rather than appended to: this also drops a last
            # line cut short by a crash, which would otherwise corrupt the rows after it.
            kept = [r for r in _read_rows(self.jsonl_path) if r.get("step", 0) <= trainer.global_step]
            tmp = self.jsonl_path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(tmp, self.jsonl_path)
        self._file = open(self.jsonl_path, "a")  # noqa: SIM115 - held open for the run
        if self.parameter_overview:
            self._write_parameter_overview(trainer)

    def on_log(self, trainer: Trainer, metrics: Mapping[str, float], step: int) -> None:
        self._append(step, metrics)

    def on_train_end(self, trainer: Trainer) -> None:
        self._finish()

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        self._finish()

    # ------------------------------------------------------------------ #
    # Internals
    # ------------------------------------------------------------------ #
    def _append(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._file is None:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        # allow_nan: a NaN loss is exactly what one wants to see in the log.
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _finish(self) -> None:
        self._close_file()
        rows = _read_rows(self.jsonl_path)
        if not rows:
            return
        if self.write_csv:
            self._write_csv(rows)
        if self.plot:
            try:
                self._write_plot(rows)
            except ImportError:
                _log.warning("MetricsLogger: matplotlib is not installed; no %s", self.plot_path)

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        columns = ["step"] + sorted({k for r in rows for k in r} - {"step"})
        tmp = self.csv_path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.csv_path)

    def _plot_keys(self, rows: list[dict[str, Any]]) -> list[str]:
        present = {k for r in rows for k in r} - {"step"}
        if self.plot_keys is not None:
            return [k for k in self.plot_keys if k in present]
        keys = [k for k in DEFAULT_PLOT_KEYS if k in present]
        return (keys or sorted(present))[: self.max_plots]

    def _write_plot(self, rows: list[dict[str, Any]]) -> None:
        # Figure + Agg canvas directly: no pyplot, so no global backend switch in the user's process.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        keys = self._plot_keys(rows)
        if not keys:
            return
        fig = Figure(figsize=(5 * len(keys), 3.5), layout="constrained")
        FigureCanvasAgg(fig)
        for i, key in enumerate(keys):
            ax = fig.add_subplot(1, len(keys), i + 1)
            points = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, lw=1.2)
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        tmp = self.plot_path + ".tmp.png"
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, self.plot_path)

    def _write_parameter_overview(self, trainer: Trainer) -> None:
        from clu import parameter_overview

        text = parameter_overview.get_parameter_overview(trainer.train_state["params"])  # {model name: params}
        with open(os.path.join(self.run_dir, "parameters.txt"), "w") as f:
            f.write(text + "\n")
        _log.info("Parameters of %s:\n%s", type(trainer.model).__name__, text)
