"""The seeds' ``artifex.generative_models.training.trainers`` with the prefix changed.

``from artifex_rl.trainers import DiffusionTrainer`` works as the seeds write it;
the trainers live in :mod:`artifex_rl.generative`.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    import artifex_rl.generative as generative

    return getattr(generative, name)


def __dir__() -> list[str]:
    import artifex_rl.generative as generative

    return list(generative.__all__)
