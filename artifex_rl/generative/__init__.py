"""The model-specific trainers of the seeds: diffusion, flow, VAE, GAN, energy (and autoregressive).

Each is one file with one ``Trainer`` subclass that overrides ``compute_loss``
(and, where the algorithm needs it, ``update_phases``, ``init_extra_state`` /
``after_update`` for an EMA, ``before_update`` for a replay buffer).
Names resolve lazily, so importing one trainer does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "AutoregressiveTrainer": "artifex_rl.autoregressive",
    "VAETrainer": "artifex_rl.generative.vae",
    "GANTrainer": "artifex_rl.generative.gan",
    "EnergyTrainer": "artifex_rl.generative.energy",
    "DiffusionTrainer": "artifex_rl.generative.diffusion",
    "FlowTrainer": "artifex_rl.generative.flow",
    "DenoisingChainPolicy": "artifex_rl.generative.chain_policy",
    "DenoisingLikelihood": "artifex_rl.generative.diffusion_dpo",
    "DigitClassifierReward": "artifex_rl.generative.image_rewards",
    "InkReward": "artifex_rl.generative.image_rewards",
    "SmoothnessReward": "artifex_rl.generative.image_rewards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'artifex_rl.generative' has no attribute {name!r}")
