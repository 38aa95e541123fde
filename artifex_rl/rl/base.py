"""What the four RL trainers share: a policy head and an optional frozen reference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl.config import TrainerConfig
from artifex_rl.distributions import PolicyHead, get_policy_head
from artifex_rl.events import Callback
from artifex_rl.trainer import Trainer

REFERENCE = "reference"


class RLTrainer(Trainer):
    """A :class:`Trainer` whose model is a policy read through a :class:`PolicyHead`.

    Args:
      model, optimizer, config, callbacks: as for :class:`Trainer`.
      policy: overrides ``config.policy``: a head name or a custom
        :class:`~artifex_rl.rl.policies.PolicyHead`.
    """

    #: Rollout sources report episode totals; the logged means are their ratios.
    ratio_metrics = {
        "episode_return": ("episode_return_sum", "episodes_finished"),
        "episode_length": ("episode_length_sum", "episodes_finished"),
    }

    def __init__(
        self,
        model: nnx.Module,
        optimizer: nnx.Optimizer | optax.GradientTransformation,
        config: TrainerConfig | None = None,
        *,
        policy: str | PolicyHead | None = None,
        callbacks: Sequence[Callback] = (),
    ):
        super().__init__(model, optimizer, config, callbacks=callbacks)
        chosen = policy if policy is not None else self.config.policy
        self.auto_policy = chosen == "auto"
        self.policy: PolicyHead | None = None if self.auto_policy else get_policy_head(chosen)
        self.is_token_policy = chosen == "tokens"

    def resolve_policy(self, actions: Any = None, *, tokens: bool = False) -> None:
        """With ``policy="auto"``, pick the head from the actions, at trace time.

        Integer actions of rank >= 2 (``(B, N)``) are token sequences scored
        by a causal LM; integer ``(B,)`` actions are categorical; float
        actions are Gaussian. ``tokens=True`` forces the token head (online
        generation). A fixed policy is left as it is.
        """
        if not self.auto_policy:
            return
        if tokens:
            name = "tokens"
        elif jnp.issubdtype(jnp.result_type(actions), jnp.integer):
            name = "tokens" if jnp.ndim(actions) >= 2 else "categorical"
        else:
            name = "gaussian"
        self.policy = get_policy_head(name)
        self.is_token_policy = name == "tokens"

    def train_step(self, batch):
        if isinstance(batch, Mapping) and isinstance(batch.get("rewards"), np.ndarray):
            _check_finite_host_rewards(batch, type(self).__name__)
        return super().train_step(batch)

    def set_reference_model(self, reference_model: nnx.Module | None) -> None:
        """Use ``reference_model`` (frozen) for KL penalties / DPO; ``None``: a frozen
        copy of the policy as it is now (the usual choice before fine-tuning)."""
        self.register_frozen_model(REFERENCE, reference_model if reference_model is not None else self.model)

    @property
    def has_reference_model(self) -> bool:
        return REFERENCE in self.frozen_states


def _check_finite_host_rewards(batch: Mapping[str, Any], who: str) -> None:
    """NaN/inf rewards at real (unmasked) steps of a host batch are an error.

    Only numpy rewards are checked: reading a device array would wait for the
    device. Padding (``mask`` 0) may hold anything.
    """
    rewards = batch["rewards"]
    bad = ~np.isfinite(rewards)
    mask = batch.get("mask")
    if isinstance(mask, np.ndarray) and mask.shape == rewards.shape:
        bad &= mask > 0
    if bad.any():
        where = np.argwhere(bad)[:5].tolist()
        raise ValueError(
            f"{who}: batch['rewards'] (shape {rewards.shape}) holds NaN or inf at positions {where}; "
            "rewards must be finite (mask padding with batch['mask'] = 0)"
        )
