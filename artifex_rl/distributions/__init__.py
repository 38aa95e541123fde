"""From model output to an action distribution: policy heads and token log-probs.

A policy head is a small stateless object that knows how to read a model's raw
output as a distribution: ``log_prob``, ``entropy`` and ``sample``. Trainers
and rollout sources take one as a setting, so the same PPO code drives a
discrete CartPole policy, a Gaussian latent policy or a language model.

* :class:`CategoricalPolicy` -- discrete actions; the model returns logits
  ``(..., A)`` and actions are integers ``(...)``.
* :class:`GaussianPolicy` -- continuous actions; the model returns
  ``(mean, log_std)``, each ``(..., D)``, a diagonal Gaussian. Log-probs and
  entropies are summed over ``D``.
* :class:`TokenPolicy` -- sequences; a causal LM returns logits ``(B, T, V)``
  for tokens ``(B, T)``, scored per token by :func:`token_log_probs`.
* :class:`TrajectoryPolicy` -- the protocol of a sampler's chain read as a
  policy (a diffusion or flow sampler: Gaussian steps, :mod:`.chain`).

These are written out rather than taken from distrax: each is a few lines of
``jax.nn.log_softmax`` arithmetic, and keeping them here avoids pulling
TensorFlow Probability's JAX substrate into every install. This package knows
no trainer: ``envs``, ``tasks`` and the losses import it.
"""

from artifex_rl.distributions.categorical import (
    CategoricalPolicy,
    categorical_entropy,
    categorical_log_prob,
    entropy_from_log_probs,
)
from artifex_rl.distributions.chain import StepScores, Trajectory, TrajectoryPolicy
from artifex_rl.distributions.gaussian import GaussianPolicy, gaussian_entropy, gaussian_log_prob
from artifex_rl.distributions.head import PolicyHead, get_policy_head
from artifex_rl.distributions.tokens import TokenPolicy, score_sequences, token_entropies, token_log_probs

__all__ = [
    "CategoricalPolicy",
    "GaussianPolicy",
    "PolicyHead",
    "StepScores",
    "TokenPolicy",
    "Trajectory",
    "TrajectoryPolicy",
    "categorical_entropy",
    "categorical_log_prob",
    "entropy_from_log_probs",
    "gaussian_entropy",
    "gaussian_log_prob",
    "get_policy_head",
    "score_sequences",
    "token_entropies",
    "token_log_probs",
]
