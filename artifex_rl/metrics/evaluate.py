"""Judging generated digits with the classifier: cFD, class recognition, class histogram, and the floors.

Every generative run reports three classifier Fréchet distances computed the
same way, 500 images against 500 (matched N, because the estimate's upward
bias depends on N):

* ``cfd``: the model's samples against the 500 held-out real digits;
* ``cfd_real_floor``: the 500 held-out digits against 500 training digits (what
  a perfect model would score, up to sampling noise);
* ``cfd_noise_baseline``: 500 images of Gaussian noise with the training data's
  per-pixel mean and standard deviation against the held-out digits.

Per class there are only ~50 held-out digits, too few for a 32x32 covariance,
so conditional samples are judged by ``class_accuracy`` (fraction the
classifier assigns to the requested class) instead of per-class cFDs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from artifex_rl.data import NUM_CLASSES, NUM_HELDOUT, load_digits_split
from artifex_rl.metrics.classifier import classifier_features, predict_logits
from artifex_rl.metrics.frechet import classifier_frechet_distance
from artifex_rl.models.classifier import DigitClassifier

NUM_EVAL_SAMPLES = NUM_HELDOUT
FLOOR_SEED = 0


def _check_samples(images: Any, labels: Any) -> tuple[np.ndarray, np.ndarray | None]:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (8, 8, 1):
        raise ValueError(f"images must have shape (N, 8, 8, 1), got {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype}")
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or inf")
    if labels is None:
        return images.astype(np.float32), None
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},) like images, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if np.all(labels == -1):  # the samples.npz convention for unconditional samples
        return images.astype(np.float32), None
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(
            f"labels must be in [0, {NUM_CLASSES - 1}] (or all -1 for unconditional samples), "
            f"got values in [{labels.min()}, {labels.max()}]"
        )
    return images.astype(np.float32), labels


def evaluate_samples(
    classifier: DigitClassifier,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    reference_images: np.ndarray | None = None,
) -> dict[str, Any]:
    """Classifier scores of generated digits.

    Args:
      classifier: the evaluation network (:func:`~artifex_rl.metrics.train_digit_classifier`).
      images: samples ``(N, 8, 8, 1)`` float in ``[-1, 1]``; use ``N = 500``
        to compare with the floors.
      labels: the requested class of each sample ``(N,)`` int in ``0..9``;
        ``None`` or all ``-1`` for unconditional samples.
      reference_images: real images to compare with; default: the 500 held-out digits.

    Returns:
      ``{"cfd": float, "class_histogram": list of 10 floats (fraction of
      samples assigned to each class), "num_samples": N}`` plus
      ``"class_accuracy"`` (fraction assigned to the requested class) when
      ``labels`` are given.
    """
    images, labels = _check_samples(images, labels)
    if reference_images is None:
        reference_images = load_digits_split().heldout_images
    reference, _ = _check_samples(reference_images, None)
    logits = predict_logits(classifier, images)
    predicted = logits.argmax(axis=-1)
    result: dict[str, Any] = {
        "cfd": classifier_frechet_distance(
            classifier_features(classifier, images), classifier_features(classifier, reference)
        ),
        "class_histogram": (np.bincount(predicted, minlength=NUM_CLASSES) / len(predicted)).tolist(),
        "num_samples": int(len(images)),
    }
    if labels is not None:
        result["class_accuracy"] = float(np.mean(predicted == labels))
    return result


def noise_baseline_images(num_samples: int = NUM_EVAL_SAMPLES, seed: int = FLOOR_SEED) -> np.ndarray:
    """Gaussian noise ``(num_samples, 8, 8, 1)`` float32 with the training digits' per-pixel mean and std."""
    train = load_digits_split().train_images
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((num_samples, *train.shape[1:]))
    return (train.mean(axis=0) + train.std(axis=0) * noise).astype(np.float32)


def cfd_floors(
    classifier: DigitClassifier, num_samples: int = NUM_EVAL_SAMPLES, seed: int = FLOOR_SEED
) -> dict[str, float]:
    """The two reference distances every run reports next to its ``cfd``.

    Args:
      classifier: the evaluation network.
      num_samples: images per set (default 500, the held-out size: matched N).
      seed: which training digits form the floor's subset, and the noise.

    Returns:
      ``{"cfd_real_floor": cFD(held-out, num_samples training digits),
      "cfd_noise_baseline": cFD(held-out, matched Gaussian noise)}``.
    """
    split = load_digits_split()
    if not 2 <= num_samples <= min(len(split.heldout_images), len(split.train_images)):
        raise ValueError(f"num_samples must be in [2, {len(split.heldout_images)}], got {num_samples}")
    rng = np.random.default_rng(seed)
    train_subset = split.train_images[rng.choice(len(split.train_images), num_samples, replace=False)]
    heldout = classifier_features(classifier, split.heldout_images[:num_samples])
    return {
        "cfd_real_floor": classifier_frechet_distance(classifier_features(classifier, train_subset), heldout),
        "cfd_noise_baseline": classifier_frechet_distance(
            classifier_features(classifier, noise_baseline_images(num_samples, seed)), heldout
        ),
    }
