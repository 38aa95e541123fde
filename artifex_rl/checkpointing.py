"""Compatibility module: checkpoints now live in :mod:`artifex_rl.checkpoint`."""

from artifex_rl.checkpoint import *  # noqa: F401,F403
from artifex_rl.checkpoint import __all__  # noqa: F401
from artifex_rl.checkpoint.io import FORMAT_VERSION  # noqa: F401
