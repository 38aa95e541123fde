"""Callbacks: one file each, all built on :class:`artifex_rl.events.Callback`."""

from artifex_rl.events import Callback, CallbackList

__all__ = ["Callback", "CallbackList"]
