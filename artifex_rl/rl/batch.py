"""Re-export of :mod:`artifex_rl.batches` and :func:`~artifex_rl.distributions.score_sequences`."""

from artifex_rl.batches import canonical, check_leading, check_shape, flatten_leading, require
from artifex_rl.distributions.tokens import score_sequences

__all__ = ["canonical", "check_leading", "check_shape", "flatten_leading", "require", "score_sequences"]
