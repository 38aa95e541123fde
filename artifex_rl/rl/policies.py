"""Re-export of :mod:`artifex_rl.distributions` (the policy heads moved there)."""

from artifex_rl.distributions import (
    CategoricalPolicy,
    GaussianPolicy,
    PolicyHead,
    TokenPolicy,
    get_policy_head,
    token_entropies,
    token_log_probs,
)

__all__ = [
    "CategoricalPolicy",
    "GaussianPolicy",
    "PolicyHead",
    "TokenPolicy",
    "get_policy_head",
    "token_entropies",
    "token_log_probs",
]
