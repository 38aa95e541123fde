"""Data: the scikit-learn digits (fixed split) and a resumable array dataloader."""

from artifex_rl.data.digits import (
    IMAGE_SHAPE,
    NUM_CLASSES,
    NUM_HELDOUT,
    NUM_TRAIN,
    SPLIT_SEED,
    DigitsSplit,
    load_digits_split,
    scale_pixels,
)
from artifex_rl.data.loader import MASK_KEY, ArrayDataLoader

__all__ = [
    "IMAGE_SHAPE",
    "MASK_KEY",
    "NUM_CLASSES",
    "NUM_HELDOUT",
    "NUM_TRAIN",
    "SPLIT_SEED",
    "ArrayDataLoader",
    "DigitsSplit",
    "load_digits_split",
    "scale_pixels",
]
