"""Configs of the four RL trainers.

The first fields of each config, their names, order and defaults, are the
seeds' (``REINFORCEConfig(gamma=0.99, normalize_returns=True,
entropy_coeff=0.01)`` and so on); fields after them are additions with
defaults, for the variants the trainers implement. Every config also carries
the loop settings of :class:`~artifex_rl.config.TrainerConfig`
(``log_every_n_steps``, ``max_grad_norm``, ``grad_accum_steps``, ``seed``) as
keyword-only fields.
"""

from __future__ import annotations

import dataclasses
import warnings

from artifex_rl.config import TrainerConfig
from artifex_rl.rl.losses import DPO_LOSS_TYPES, GRPO_LOSS_TYPES, KL_ESTIMATORS, SCALE_REWARDS

POLICIES = ("categorical", "gaussian", "tokens")
#: Every RL trainer may also infer the policy head from the actions (see RLTrainer.resolve_policy).
POLICIES_OR_AUTO = (*POLICIES, "auto")


def _check(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {list(valid)}, got {value!r}")


def _check_range(name: str, value: float, low: float, high: float | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_positive(name: str, value: float, why: str) -> None:
    """``value > 0``; the error says what a non-positive value would do."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}: {why}")


_CLIP_WHY = "the clipped ratio is then constant (1), so the policy gradient vanishes"


@dataclasses.dataclass(frozen=True)
class REINFORCEConfig(TrainerConfig):
    """REINFORCE (Williams, 1992) with return normalisation and an entropy bonus.

    Attributes:
      gamma: discount factor for the returns ``G_t``.
      normalize_returns: standardise returns over the batch (a baseline that
        reduces variance).
      entropy_coeff: weight of the entropy bonus.
      policy: how the model's output is read: ``"categorical"`` (logits),
        ``"gaussian"`` (mean, log_std) or ``"tokens"`` (a causal LM scoring
        completions; each sequence is one episode with reward ``(B,)``), or
        ``"auto"``: Gaussian when the model returns a pair, else categorical.
      mask_unfinished_episodes: with ``dones`` in the batch, leave out the
        steps after a row's last ``done``: their episode goes on past the
        window, so their return is truncated (Williams' estimator needs whole
        episodes; a rollout window of T steps cuts the last episode of every
        environment). Reported as ``unfinished_frac``. Batches without
        ``dones`` are one whole episode per row, as the seeds write them.
    """

    gamma: float = 0.99
    normalize_returns: bool = True
    entropy_coeff: float = 0.01
    policy: str = "categorical"
    mask_unfinished_episodes: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range("gamma", self.gamma, 0.0, 1.0)
        _check("policy", self.policy, POLICIES_OR_AUTO)


@dataclasses.dataclass(frozen=True)
class PPOConfig(TrainerConfig):
    """Proximal Policy Optimization (Schulman et al., 2017) with GAE.

    Attributes:
      gamma, gae_lambda: GAE discount and lambda.
      clip_param: the surrogate's clip ``epsilon > 0`` (also the value clip).
      vf_coeff: weight of the value loss.
      entropy_coeff: weight of the entropy bonus.
      max_grad_norm: global-norm gradient clip (keyword-only, default 0.5).
      update_epochs: passes over each batch.
      num_minibatches: minibatches per pass; all ``update_epochs *
        num_minibatches`` updates run inside one compiled call.
      clip_value_loss: clip the value prediction around the old value.
      normalize_advantages: standardise advantages per minibatch.
      target_kl: stop this batch's remaining updates once a minibatch's
        approximate KL exceeds this (``None``: never).
      policy: ``"categorical"``, ``"gaussian"`` or ``"auto"`` (Gaussian when
        the model's policy output is a pair ``(mean, log_std)``), or
        ``"tokens"``: PPO on token sequences (the RLHF loop; see
        :mod:`artifex_rl.rl.ppo_tokens`), the model a causal LM with a value
        head returning ``(logits (B, T, V), values (B, T))``.
      kl_coeff: tokens only: weight of the per-token KL penalty
        ``-kl_coeff * (log pi_old - log pi_ref)`` added to the rewards
        (InstructGPT's beta; ``0``: no reference model).
      max_new_tokens, temperature, eos_id, pad_id: tokens only: sampling
        settings of the online ``train_step(prompts, reward_fn, key)``; the
        update scores tokens under ``logits / temperature`` as sampled.
    """

    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_param: float = 0.2
    vf_coeff: float = 0.5
    entropy_coeff: float = 0.01
    max_grad_norm: float | None = dataclasses.field(default=0.5, kw_only=True)
    update_epochs: int = 4
    num_minibatches: int = 4
    clip_value_loss: bool = True
    normalize_advantages: bool = True
    target_kl: float | None = None
    policy: str = "categorical"
    kl_coeff: float = 0.05
    max_new_tokens: int = 16
    temperature: float = 1.0
    eos_id: int | None = None
    pad_id: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range("gamma", self.gamma, 0.0, 1.0)
        _check_range("gae_lambda", self.gae_lambda, 0.0, 1.0)
        _check_positive("clip_param", self.clip_param, _CLIP_WHY)
        _check_range("update_epochs", self.update_epochs, 1)
        _check_range("num_minibatches", self.num_minibatches, 1)
        _check_range("kl_coeff", self.kl_coeff, 0.0)
        _check_range("max_new_tokens", self.max_new_tokens, 1)
        _check("policy", self.policy, ("categorical", "gaussian", "auto", "tokens"))


@dataclasses.dataclass(frozen=True)
class GRPOConfig(TrainerConfig):
    """Group Relative Policy Optimization (Shao et al., 2024).

    Attributes:
      num_generations: group size ``G >= 2``: completions per prompt,
        consecutive in the batch.
      clip_param: lower clip ``epsilon > 0`` (and upper, unless ``epsilon_high``).
      beta: weight of the KL penalty to the reference policy (``0``: none).
      entropy_coeff: weight of the entropy bonus.
      gamma: kept for the seeds' API; GRPO's rewards are per sequence, so
        there is nothing to discount and it is unused.
      epsilon_high: upper clip (DAPO's clip-higher); ``None``: ``clip_param``.
      scale_rewards: ``"group"``, ``"batch"`` or ``"none"`` (Dr. GRPO).
      loss_type: token aggregation: ``"grpo"`` (per-sequence means),
        ``"bnpo"`` (the token mean of each micro-batch), ``"dr_grpo"``
        (a constant normaliser) or ``"dapo"`` (the token mean over the whole
        batch, exact under gradient accumulation); see
        :func:`artifex_rl.rl.losses.token_loss_term`.
      num_iterations: updates (``mu``) on each batch of generations.
      kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (default, always >= 0).
      policy: ``"auto"`` (default: integer ``(B, N)`` actions are token
        sequences scored by a causal LM, integer ``(B,)`` actions are
        categorical, float actions Gaussian; online generation is tokens),
        or one of ``"tokens"``, ``"categorical"``, ``"gaussian"``.
      max_new_tokens, temperature, top_k, eos_id, pad_id: sampling settings
        of the online ``train_step(batch, reward_fn, key)``.
      advantage_clip: clip the advantages to ``[-c, c]`` (DDPO's
        ``adv_clip_max``); ``None``: no clipping.
    """

    num_generations: int = 4
    clip_param: float = 0.2
    beta: float = 0.01
    entropy_coeff: float = 0.01
    gamma: float = 0.99
    epsilon_high: float | None = None
    scale_rewards: str = "group"
    loss_type: str = "grpo"
    num_iterations: int = 1
    kl_estimator: str = "k3"
    policy: str = "auto"
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    eos_id: int | None = None
    pad_id: int = 0
    advantage_clip: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.advantage_clip is not None:
            _check_positive("advantage_clip", self.advantage_clip, "every advantage would be clipped to 0")
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2, got {self.num_generations}: a group of one completion "
                "has advantage 0, so GRPO would train only the KL and entropy terms"
            )
        _check_range("num_iterations", self.num_iterations, 1)
        _check_positive("clip_param", self.clip_param, _CLIP_WHY)
        if self.epsilon_high is not None:
            _check_positive("epsilon_high", self.epsilon_high, "the upper clip 1 + epsilon_high must exceed 1")
        _check_range("beta", self.beta, 0.0)
        _check("scale_rewards", self.scale_rewards, SCALE_REWARDS)
        _check("loss_type", self.loss_type, GRPO_LOSS_TYPES)
        _check("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _check("policy", self.policy, POLICIES_OR_AUTO)


@dataclasses.dataclass(frozen=True)
class DPOConfig(TrainerConfig):
    """Direct Preference Optimization (Rafailov et al., 2023) and variants.

    Attributes:
      beta: temperature of the implicit reward ``beta * log(pi / ref)``;
        ``> 0`` (at 0 every loss type's gradient vanishes, and IPO divides by
        it). SimPO's paper uses 2-10; a smaller value with ``reference_free``
        warns, because the margin ``simpo_gamma`` then dominates.
      label_smoothing: probability that a preference label is flipped
        (conservative DPO / robust DPO).
      reference_free: SimPO (Meng et al., 2024): no reference model,
        length-normalised log-probs and a target margin ``simpo_gamma``.
      loss_type: ``"sigmoid"``, ``"hinge"``, ``"ipo"`` or ``"robust"``
        (see :func:`artifex_rl.rl.losses.dpo_loss_per_pair`).
      simpo_gamma: SimPO's target reward margin.
      nll_coeff: weight of the chosen completions' per-token NLL added to the
        loss (RPO, Pang et al. 2024; 0 = plain DPO). It keeps the chosen
        answers likely: plain DPO only constrains the *difference* of
        log-ratios and can learn preferences by making every answer less likely.
      policy: ``"auto"`` (default: integer ``(B, N)`` chosen/rejected are
        token sequences, integer ``(B,)`` categorical actions, float
        Gaussian actions) or one of ``"tokens"``, ``"categorical"``, ``"gaussian"``.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    reference_free: bool = False
    loss_type: str = "sigmoid"
    simpo_gamma: float = 0.5
    policy: str = "auto"
    nll_coeff: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            why = (
                "IPO's target margin 1 / (2 beta) divides by it"
                if self.loss_type == "ipo" and not self.reference_free
                else f"the {'SimPO' if self.reference_free else repr(self.loss_type)} loss then has zero gradient"
            )
            raise ValueError(f"beta must be > 0, got {self.beta}: {why}")
        if self.reference_free and self.beta < 1.0:
            warnings.warn(
                f"DPOConfig(reference_free=True, beta={self.beta}): SimPO's paper uses beta in 2-10; with "
                f"beta < 1 the target margin simpo_gamma={self.simpo_gamma} dominates the reward difference",
                UserWarning,
                stacklevel=3,
            )
        _check_range("nll_coeff", self.nll_coeff, 0.0)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 1.0)
        _check("loss_type", self.loss_type, DPO_LOSS_TYPES)
        _check("policy", self.policy, POLICIES_OR_AUTO)
        if self.reference_free and self.loss_type != "sigmoid":
            raise ValueError(f"reference_free=True (SimPO) needs loss_type='sigmoid', got {self.loss_type!r}")
