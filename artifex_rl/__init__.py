"""artifex_rl: a Lightning-style trainer framework for JAX + Flax NNX with RL trainers."""

from artifex_rl.callbacks import Callback
from artifex_rl.config import TrainerConfig
from artifex_rl.trainer import Trainer

__version__ = "0.1.0"

__all__ = ["Callback", "Trainer", "TrainerConfig", "__version__"]
