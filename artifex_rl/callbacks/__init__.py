"""Callbacks: one file each, all built on :class:`artifex_rl.events.Callback`."""

from artifex_rl.callbacks.checkpoint import CheckpointConfig, ModelCheckpoint
from artifex_rl.callbacks.early_stopping import EarlyStopping
from artifex_rl.callbacks.metrics_logger import MetricsLogger
from artifex_rl.callbacks.profiler import DeviceMemoryMonitor, JAXProfiler, ProfilingConfig
from artifex_rl.callbacks.progress import ProgressBarCallback
from artifex_rl.callbacks.samples import SampleTableLogger
from artifex_rl.callbacks.tensorboard import TensorBoardLogger
from artifex_rl.callbacks.throughput import Throughput
from artifex_rl.callbacks.wandb_logger import WandbLoggerCallback, WandbLoggerConfig
from artifex_rl.events import Callback, CallbackList

__all__ = [
    "Callback",
    "CallbackList",
    "CheckpointConfig",
    "DeviceMemoryMonitor",
    "EarlyStopping",
    "JAXProfiler",
    "MetricsLogger",
    "ModelCheckpoint",
    "ProfilingConfig",
    "ProgressBarCallback",
    "SampleTableLogger",
    "TensorBoardLogger",
    "Throughput",
    "WandbLoggerCallback",
    "WandbLoggerConfig",
]
