"""Verifiable text tasks for the RL trainers' learning tests and examples.

Each task brings a prompt generator, a jittable reward in ``[0, 1]`` and a
teacher-forcing dataset with a ``noise`` knob (see
:mod:`artifex_rl.tasks.base` for the reward conventions):

* :class:`DigitSumTask`: ``^17|`` -> four digits summing to 17, e.g. ``4607$``.
* :class:`SortDigitsTask`: ``^3141|`` -> ``1134$``.

Choosing ``noise`` for pre-training: a policy trained on demonstrations with a
``noise`` fraction of random (well-formed) answers starts RL below reward 1.
Measured with the default ``TransformerLM`` (d_model 64, 2 layers), 400 Adam
steps (lr 3e-3) on fresh batches of 256, then 1024 samples at temperature 1:

==========  ================================================
task        noise -> mean reward of the pre-trained policy
==========  ================================================
DigitSum    0.0 -> 0.95, 0.5 -> 0.49, 0.8 -> 0.32, 1.0 -> 0.27
SortDigits  0.0 -> 1.00, 0.5 -> 0.55, 0.8 -> 0.26
==========  ================================================

So ``noise`` around 0.5-0.8 gives the 0.2-0.5 starting range that leaves RL
room to improve (the numbers move with model size and training length).
"""

from artifex_rl.tasks.base import (
    CompletionReward,
    Demonstrations,
    ParsedCompletion,
    WellFormedReward,
    parse_completion,
)
from artifex_rl.tasks.digit_sum import DigitSumCloseness, DigitSumTask
from artifex_rl.tasks.sort_digits import SortDigitsTask, SortedPositionAccuracy
from artifex_rl.tasks.tokenizer import DigitTokenizer

__all__ = [
    "CompletionReward",
    "Demonstrations",
    "DigitSumCloseness",
    "DigitSumTask",
    "DigitTokenizer",
    "ParsedCompletion",
    "SortDigitsTask",
    "SortedPositionAccuracy",
    "WellFormedReward",
    "parse_completion",
]
