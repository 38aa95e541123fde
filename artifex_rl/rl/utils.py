"""Re-export of the loss maths in :mod:`artifex_rl.rl.losses` under the seeds' path.

The seeds import ``compute_discounted_returns``, ``compute_gae_advantages``,
``normalize_advantages``, ``compute_policy_entropy``, ``compute_kl_divergence``
and ``compute_clipped_surrogate_loss`` from here; the other names are the
helpers the trainers used from this module. New code imports
:mod:`artifex_rl.rl.losses`.
"""

from artifex_rl.rl.losses import (
    DPO_LOSS_TYPES,
    GRPO_LOSS_TYPES,
    KL_ESTIMATORS,
    MAX_LOG_RATIO,
    SCALE_REWARDS,
    aggregate_token_loss,
    clipped_surrogate_metrics,
    clipped_surrogate_per_element,
    compute_clipped_surrogate_loss,
    compute_discounted_returns,
    compute_dpo_loss,
    compute_gae_advantages,
    compute_gae_returns,
    compute_group_advantages,
    compute_kl_divergence,
    compute_policy_entropy,
    masked_count,
    masked_mean,
    masked_sum,
    normalize_advantages,
)

__all__ = [
    "DPO_LOSS_TYPES",
    "GRPO_LOSS_TYPES",
    "KL_ESTIMATORS",
    "MAX_LOG_RATIO",
    "SCALE_REWARDS",
    "aggregate_token_loss",
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
    "masked_count",
    "masked_mean",
    "masked_sum",
    "normalize_advantages",
]
