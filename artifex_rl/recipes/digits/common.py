"""What every digits run writes, and the evaluation classifier they share.

A generative run (and, later, an RL fine-tuning run) on the UCI digits writes,
next to the usual ``metrics.jsonl``/``checkpoints/``:

- ``samples.png``: a grid of samples (one row per class for conditional models);
- ``samples.npz``: ``images (N, 8, 8, 1)`` in ``[-1, 1]`` and ``labels (N,)``
  (the requested class, or -1 when unconditional), ``N >= 500``, so anyone can
  judge them with their own classifier;
- ``summary.json``: ``cfd``, ``cfd_real_floor``, ``cfd_noise_baseline``,
  ``class_accuracy`` (conditional), ``class_histogram``, ``wall_seconds`` and
  whatever the recipe adds.

The evaluation classifier is trained once per ``(seed, width)`` and cached in
``<cache_dir>`` (default: ``<run_dir>/../.cache/classifiers``), like the LM
pre-training cache.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from artifex_rl.metrics import cfd_floors, evaluate_samples, train_digit_classifier
from artifex_rl.plotting import save_sample_grid
from artifex_rl.recipes.common import write_summary

#: The evaluation network of every digits run (an RL reward model uses another seed and width).
EVAL_CLASSIFIER = {"seed": 0, "width": 16}
NUM_SAMPLES = 500


def classifier_cache_dir(run_dir: str) -> str:
    """Where classifiers are cached: shared by the runs under one parent directory."""
    return os.path.join(os.path.dirname(os.path.abspath(run_dir)), ".cache", "classifiers")


def evaluation_classifier(run_dir: str, seed: int = EVAL_CLASSIFIER["seed"], width: int = EVAL_CLASSIFIER["width"]):
    """The (cached) digit classifier used to score samples; returns ``(classifier, info)``."""
    return train_digit_classifier(seed=seed, width=width, cache_dir=classifier_cache_dir(run_dir))


def write_samples(run_dir: str, images: np.ndarray, labels: np.ndarray | None, *, name: str = "samples",
                  title: str | None = None) -> dict[str, str]:
    """``<name>.npz`` and ``<name>.png`` (one row per class when labelled). Returns their paths.

    Args:
      images: ``(N, 8, 8, 1)`` float in ``[-1, 1]``.
      labels: ``(N,)`` int requested classes, or ``None`` (stored as -1: unconditional).
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != (8, 8, 1):
        raise ValueError(f"images must have shape (N, 8, 8, 1), got {images.shape}")
    labels_out = np.full((len(images),), -1, np.int32) if labels is None else np.asarray(labels, np.int32)
    if labels_out.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {labels_out.shape}")
    os.makedirs(run_dir, exist_ok=True)
    npz = os.path.join(run_dir, f"{name}.npz")
    np.savez_compressed(npz, images=images, labels=labels_out)
    conditional = labels is not None and (labels_out >= 0).all()
    if conditional:  # up to 10 per class, one row per class
        picked = np.concatenate([np.flatnonzero(labels_out == c)[:10] for c in range(10)])
        png = save_sample_grid(images[picked], os.path.join(run_dir, f"{name}.png"),
                               labels=labels_out[picked], title=title)
    else:
        png = save_sample_grid(images[:100], os.path.join(run_dir, f"{name}.png"), title=title)
    return {"npz": npz, "png": png}


def evaluate_and_summarise(
    run_dir: str,
    images: np.ndarray,
    labels: np.ndarray | None,
    *,
    wall_seconds: float,
    extra: Mapping[str, Any] | None = None,
    classifier: Any = None,
) -> dict[str, Any]:
    """Score samples with the evaluation classifier, write samples and ``summary.json``; return the summary."""
    if classifier is None:
        classifier, _ = evaluation_classifier(run_dir)
    write_samples(run_dir, images, labels)
    scores = evaluate_samples(classifier, images, None if labels is None else np.asarray(labels))
    summary: dict[str, Any] = {
        **scores,
        **cfd_floors(classifier),
        "wall_seconds": float(wall_seconds),
        **dict(extra or {}),
    }
    write_summary(run_dir, summary)
    return summary
