"""PNG figures of runs: sample grids of 8x8 images and learning curves (matplotlib, Agg backend).

matplotlib is an optional dependency (the ``examples`` and ``dev`` extras); it
is imported when a figure is drawn, with the non-interactive Agg backend so
that figures render on a headless machine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_GAP = 1  # pixels of background between images


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'artifex_rl[examples]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tile(rows: list[list[np.ndarray]], height: int, width: int) -> np.ndarray:
    """Images ``(H, W)`` in rows -> one canvas, background ``-1`` (blank) between and around them."""
    ncol = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (height + _GAP) + _GAP, ncol * (width + _GAP) + _GAP), -1.0, np.float32)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            top, left = _GAP + i * (height + _GAP), _GAP + j * (width + _GAP)
            canvas[top : top + height, left : left + width] = image
    return canvas


def save_sample_grid(
    images: np.ndarray,
    path: str,
    nrow: int | None = None,
    *,
    labels: np.ndarray | None = None,
    per_row: int = 10,
    title: str | None = None,
) -> str:
    """Write a PNG grid of images ``(N, H, W, 1)`` (or ``(N, H, W)``) in ``[-1, 1]``; return ``path``.

    Ink is dark on a white background (``-1`` white, ``1`` black); values
    outside ``[-1, 1]`` are clipped for display only.

    Args:
      images: the images, in the order they fill the grid row by row.
      path: the ``.png`` to write (its directory is created).
      nrow: rows of the grid when ``labels`` is ``None``; default
        ``ceil(sqrt(N))``.
      labels: ``(N,)`` ints: one row per distinct label (ascending), holding
        that label's first ``per_row`` images, with the label written at the
        left; for class-conditional samples.
      per_row: images per row when ``labels`` is given.
      title: optional figure title.
    """
    images = np.asarray(images, np.float32)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[0] == 0:
        raise ValueError(
            f"images must have shape (N, H, W, 1) or (N, H, W) with N > 0, got {np.shape(images)}"
        )
    images = np.clip(images, -1.0, 1.0)
    n, height, width = images.shape
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) like images, got {labels.shape}")
        if not isinstance(per_row, int) or per_row <= 0:
            raise ValueError(f"per_row must be a positive int, got {per_row!r}")
        row_names = [int(c) for c in np.unique(labels)]
        rows = [list(images[labels == c][:per_row]) for c in row_names]
    else:
        if nrow is None:
            nrow = math.ceil(math.sqrt(n))
        if not isinstance(nrow, int) or nrow <= 0:
            raise ValueError(f"nrow must be a positive int, got {nrow!r}")
        ncol = math.ceil(n / nrow)
        rows = [list(images[i : i + ncol]) for i in range(0, n, ncol)]
        row_names = None
    canvas = _tile(rows, height, width)
    plt = _pyplot()
    scale = 0.06  # inches per pixel
    fig, ax = plt.subplots(
        figsize=(max(2.0, canvas.shape[1] * scale + 0.6), max(1.5, canvas.shape[0] * scale + 0.4))
    )
    ax.imshow(canvas, cmap="gray_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    if row_names is not None:
        ax.set_yticks([_GAP + i * (height + _GAP) + (height - 1) / 2 for i in range(len(rows))], row_names)
        ax.tick_params(axis="y", length=0)
    else:
        ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def save_learning_curve(
    steps: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    path: str,
    *,
    xlabel: str = "step",
    ylabel: str | None = None,
    log_y: bool = False,
    title: str | None = None,
) -> str:
    """Write a PNG of one or more curves sharing the x values ``steps``; return ``path``.

    Args:
      steps: x values, ``(T,)``.
      curves: ``{name: values (T,)}``, one line each (with a legend when more than one).
      path: the ``.png`` to write (its directory is created).
      xlabel, ylabel, title: axis labels and title.
      log_y: logarithmic y axis.
    """
    steps = np.asarray(steps, np.float64)
    if steps.ndim != 1 or not len(curves):
        raise ValueError(
            f"steps must be 1-D and curves non-empty; got steps {steps.shape}, {len(curves)} curves"
        )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, values in curves.items():
        values = np.asarray(values, np.float64)
        if values.shape != steps.shape:
            raise ValueError(f"curves[{name!r}] has shape {values.shape}, expected {steps.shape} like steps")
        ax.plot(steps, values, label=name)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    if len(curves) > 1:
        ax.legend()
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
