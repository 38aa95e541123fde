"""What the four RL trainers share: a policy head and an optional frozen reference."""

from __future__ import annotations

from collections.abc import Sequence

import optax
from flax import nnx

from artifex_rl.config import TrainerConfig
from artifex_rl.events import Callback
from artifex_rl.rl.policies import PolicyHead, get_policy_head
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
        self.policy: PolicyHead = get_policy_head(policy if policy is not None else self.config.policy)
        self.is_token_policy = (policy if policy is not None else self.config.policy) == "tokens"

    def set_reference_model(self, reference_model: nnx.Module | None) -> None:
        """Use ``reference_model`` (frozen) for KL penalties / DPO; ``None``: a frozen
        copy of the policy as it is now (the usual choice before fine-tuning)."""
        self.register_frozen_model(REFERENCE, reference_model if reference_model is not None else self.model)

    @property
    def has_reference_model(self) -> bool:
        return REFERENCE in self._frozen_states
