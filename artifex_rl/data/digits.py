"""Real handwritten digits that ship with scikit-learn, split once and for all.

``sklearn.datasets.load_digits`` bundles the UCI optical-recognition digits
(Alpaydin & Kaynak, 1998) inside the scikit-learn wheel: 1,797 images of 8x8
pixels with 17 grey levels (0..16) and 10 classes, so no download is needed.

:func:`load_digits_split` scales the pixels to ``[-1, 1]`` (``x / 8 - 1``, so
the 17 levels land on a grid of step 1/8), reshapes them to NHWC
``(N, 8, 8, 1)`` and makes a **fixed** stratified split of 1,297 training and
500 held-out images (``train_test_split`` with :data:`SPLIT_SEED`): every run,
model and metric in the project sees the same held-out 500, which is what makes
the classifier Fréchet distances of different runs comparable.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
NUM_HELDOUT = 500
NUM_TRAIN = 1297
# The split is part of the data set's definition: changing it changes every number reported against it.
SPLIT_SEED = 0
_MAX_LEVEL = 16.0


class DigitsSplit(NamedTuple):
    """The fixed split; images float32 ``(N, 8, 8, 1)`` in ``[-1, 1]``, labels int32 ``(N,)`` in ``0..9``.

    The arrays are read-only (they are shared by every caller).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray

    def train(self) -> dict[str, np.ndarray]:
        """``{"images", "labels"}`` of the training split, e.g. for :class:`~artifex_rl.data.ArrayDataLoader`."""
        return {"images": self.train_images, "labels": self.train_labels}

    def heldout(self) -> dict[str, np.ndarray]:
        """``{"images", "labels"}`` of the 500 held-out digits."""
        return {"images": self.heldout_images, "labels": self.heldout_labels}


def scale_pixels(levels: np.ndarray) -> np.ndarray:
    """Grey levels ``0..16`` -> float32 in ``[-1, 1]`` (``levels / 8 - 1``)."""
    return (np.asarray(levels, np.float32) / (_MAX_LEVEL / 2) - 1.0).astype(np.float32)


@functools.cache
def load_digits_split() -> DigitsSplit:
    """The 1,797 scikit-learn digits as a fixed stratified 1,297 / 500 split (cached per process).

    Returns:
      :class:`DigitsSplit` with images float32 ``(N, 8, 8, 1)`` in ``[-1, 1]``
      and labels int32 ``(N,)``; ``N`` = 1,297 (train) and 500 (held-out). Each
      class keeps its share of the data in both parts (``stratify=labels``).
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # scikit-learn is an optional dependency (the examples/dev extras)
        raise ImportError(
            "the digits data set needs scikit-learn: pip install 'artifex_rl[examples]' (or scikit-learn)"
        ) from exc
    data = load_digits()
    images = scale_pixels(data.images).reshape(-1, *IMAGE_SHAPE)
    labels = np.asarray(data.target, np.int32)
    train_x, heldout_x, train_y, heldout_y = train_test_split(
        images, labels, test_size=NUM_HELDOUT, random_state=SPLIT_SEED, stratify=labels
    )
    arrays = [np.ascontiguousarray(a) for a in (train_x, train_y, heldout_x, heldout_y)]
    for a in arrays:
        a.flags.writeable = False
    return DigitsSplit(*arrays)
