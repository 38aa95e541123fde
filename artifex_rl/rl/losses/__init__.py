"""Pure loss maths of the RL trainers, one module per topic; none knows a trainer.

* :mod:`.returns` -- discounted returns and GAE (one trajectory, and batched);
* :mod:`.policy_gradient` -- REINFORCE, PPO's clipped surrogate, value loss;
* :mod:`.kl` -- KL estimators (k1/k2/k3), closed forms, the entropy bonus;
* :mod:`.aggregation` -- masked reductions, GRPO-family token aggregation,
  and the :class:`~artifex_rl.core.loss_terms.LossTerm` ``(total, count)``
  forms that stay exact under gradient accumulation;
* :mod:`.group` -- group-relative advantages and group statistics;
* :mod:`.preference` -- the DPO family, per pair.

Conventions: time is the last axis (``(T,)`` or ``(B, T)``); masks are
booleans (non-zero = valid) broadcast to the masked array, and masked entries
are selected out with ``jnp.where`` (never multiplied by 0) so NaN padding
cannot leak into a value; low-precision inputs are promoted to at least
float32. Functions that need a hyper-parameter as a *Python* value
(``group_size``, ``loss_type``, ``estimator``) say so; everything else may be
traced. Shape checks run at trace time and name the argument, the shape got
and the shape expected.
"""

from artifex_rl.rl.losses._common import MAX_LOG_RATIO
from artifex_rl.rl.losses.aggregation import (
    GRPO_LOSS_TYPES,
    aggregate_token_loss,
    masked_count,
    masked_mean,
    masked_mean_term,
    masked_sum,
    normalize_advantages,
    token_loss_term,
)
from artifex_rl.rl.losses.group import SCALE_REWARDS, GroupStats, compute_group_advantages, group_statistics
from artifex_rl.rl.losses.kl import (
    KL_ESTIMATORS,
    categorical_kl,
    compute_kl_divergence,
    compute_policy_entropy,
    gaussian_kl,
    kl_estimate,
)
from artifex_rl.rl.losses.policy_gradient import (
    clipped_surrogate_metrics,
    clipped_surrogate_per_element,
    compute_clipped_surrogate_loss,
    policy_gradient_per_element,
    value_loss_per_element,
)
from artifex_rl.rl.losses.preference import (
    DPO_LOSS_TYPES,
    chosen_nll_term,
    compute_dpo_loss,
    dpo_loss_per_pair,
    simpo_loss_per_pair,
)
from artifex_rl.rl.losses.returns import (
    compute_discounted_returns,
    compute_gae_advantages,
    compute_gae_returns,
    discounted_returns,
    generalized_advantage_estimation,
)

__all__ = [
    "DPO_LOSS_TYPES",
    "GRPO_LOSS_TYPES",
    "KL_ESTIMATORS",
    "MAX_LOG_RATIO",
    "SCALE_REWARDS",
    "GroupStats",
    "aggregate_token_loss",
    "categorical_kl",
    "chosen_nll_term",
    "clipped_surrogate_metrics",
    "clipped_surrogate_per_element",
    "compute_clipped_surrogate_loss",
    "compute_discounted_returns",
    "compute_dpo_loss",
    "compute_gae_advantages",
    "compute_gae_returns",
    "compute_group_advantages",
    "compute_kl_divergence",
    "compute_policy_entropy",
    "discounted_returns",
    "dpo_loss_per_pair",
    "gaussian_kl",
    "generalized_advantage_estimation",
    "group_statistics",
    "kl_estimate",
    "masked_count",
    "masked_mean",
    "masked_mean_term",
    "masked_sum",
    "normalize_advantages",
    "policy_gradient_per_element",
    "simpo_loss_per_pair",
    "token_loss_term",
    "value_loss_per_element",
]
