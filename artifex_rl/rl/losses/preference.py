"""Preference losses of the DPO family, per pair, and the seeds' reduced DPO loss.

Inputs are sequence log-probs ``(B,)``: sums of per-token log-probs over each
completion of a (chosen, rejected) pair. With ``pi_*`` the policy's and
``ref_*`` the reference's, the DPO "logits" are
``h = (pi_c - pi_r) - (ref_c - ref_r)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from artifex_rl.core.loss_terms import LossTerm
from artifex_rl.rl.losses._common import ArrayLike, as_float, check_choice, check_same_shape

Array = jax.Array

DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust")


def _smoothed_sigmoid_loss(z: Array, label_smoothing: float | Array) -> Array:
    """``-(1 - ls) log sigma(z) - ls log sigma(-z)``: BCE against label ``1 - ls``."""
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)


def _check_label_smoothing(label_smoothing: float | Array, loss_type: str) -> None:
    if not isinstance(label_smoothing, (int, float)):
        return  # traced: checked by the config
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if loss_type == "robust" and label_smoothing >= 0.5:
        raise ValueError(
            f"loss_type='robust' needs label_smoothing < 0.5 (divides by 1 - 2*ls), got {label_smoothing}"
        )
    if loss_type in ("hinge", "ipo") and label_smoothing != 0.0:
        raise ValueError(f"label_smoothing is not defined for loss_type={loss_type!r}; got {label_smoothing}")


def dpo_loss_per_pair(
    logits: ArrayLike,
    beta: float | Array = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float | Array = 0.0,
) -> Array:
    """Per-pair loss of the DPO family from ``h = (pi_c - pi_r) - (ref_c - ref_r)``.

    With ``ls = label_smoothing``:

    * ``"sigmoid"`` (DPO; ``ls > 0`` is conservative DPO):
      ``-(1 - ls) log sigma(beta h) - ls log sigma(-beta h)``;
    * ``"hinge"`` (SLiC): ``relu(1 - beta h)``;
    * ``"ipo"``: ``(h - 1 / (2 beta))^2``, on ``h`` as given (sums, not
      length-averaged; average the log-probs yourself to follow the paper);
    * ``"robust"`` (``ls < 0.5``):
      ``((1 - ls)(-log sigma(beta h)) + ls log sigma(-beta h)) / (1 - 2 ls)``.

    ``label_smoothing`` is used by ``sigmoid`` and ``robust``; with
    ``hinge``/``ipo`` a non-zero value is an error rather than silently ignored.

    Args:
      logits: ``(B,)`` the pairs' ``h``.
      beta: temperature of the implicit reward ``beta log(pi / ref)``; ``> 0``.
      loss_type: one of :data:`DPO_LOSS_TYPES` (a Python string).
      label_smoothing: probability that a label is flipped.

    Returns:
      ``(B,)`` per-pair losses.

    References:
      Rafailov et al. 2023, "Direct Preference Optimization" (arXiv:2305.18290), eq. 7;
      Zhao et al. 2023, "SLiC-HF" (arXiv:2305.10425);
      Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning
      from Human Preferences" (IPO, arXiv:2310.12036), eq. 17;
      Chowdhury et al. 2024, "Provably Robust DPO" (arXiv:2403.00409), eq. 8.
    """
    check_choice("loss_type", loss_type, DPO_LOSS_TYPES)
    _check_label_smoothing(label_smoothing, loss_type)
    h = as_float(logits)
    if loss_type == "sigmoid":
        return _smoothed_sigmoid_loss(beta * h, label_smoothing)
    if loss_type == "hinge":
        return jax.nn.relu(1.0 - beta * h)
    if loss_type == "ipo":
        return jnp.square(h - 1.0 / (2.0 * beta))
    return (
        -(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h)
        + label_smoothing * jax.nn.log_sigmoid(-beta * h)
    ) / (1.0 - 2.0 * label_smoothing)


def simpo_loss_per_pair(
    chosen_logps: ArrayLike,
    rejected_logps: ArrayLike,
    chosen_lengths: ArrayLike,
    rejected_lengths: ArrayLike,
    beta: float | Array = 2.0,
    gamma: float | Array = 0.5,
    label_smoothing: float | Array = 0.0,
) -> Array:
    """Per-pair SimPO loss: reference-free, length-normalised, with a target margin.

    ``c = pi_c / max(|y_c|, 1)``, ``r = pi_r / max(|y_r|, 1)``,
    ``z = beta (c - r) - gamma`` and
    ``loss = -(1 - ls) log sigma(z) - ls log sigma(-z)``.

    Args:
      chosen_logps, rejected_logps: ``(B,)`` summed policy log-probs.
      chosen_lengths, rejected_lengths: ``(B,)`` completion lengths in tokens.
      beta: reward scale (the paper uses 2-10).
      gamma: target reward margin (the paper uses 0.3-1.6).
      label_smoothing: probability that a label is flipped.

    Returns:
      ``(B,)`` per-pair losses.

    References:
      Meng et al. 2024, "SimPO: Simple Preference Optimization with a
      Reference-Free Reward" (arXiv:2405.14734), eq. 6.
    """
    pi_c = as_float(chosen_logps)
    for name, x in (
        ("rejected_logps", rejected_logps),
        ("chosen_lengths", chosen_lengths),
        ("rejected_lengths", rejected_lengths),
    ):
        check_same_shape(name, x, "chosen_logps", pi_c)
    c = pi_c / jnp.maximum(as_float(chosen_lengths), 1.0)
    r = as_float(rejected_logps) / jnp.maximum(as_float(rejected_lengths), 1.0)
    return _smoothed_sigmoid_loss(beta * (c - r) - gamma, label_smoothing)


def chosen_nll_term(chosen_logps: ArrayLike, chosen_token_counts: ArrayLike) -> LossTerm:
    """The chosen completions' per-token NLL as ``LossTerm(-sum pi_c, sum |y_c|)``.

    Summed over micro-batches it is the NLL per chosen token of the whole
    batch (RPO's auxiliary term, which keeps chosen answers likely).

    Args:
      chosen_logps: ``(B,)`` summed log-probs of the chosen completions.
      chosen_token_counts: ``(B,)`` their token counts (ones for one-action pairs).

    References:
      Pang et al. 2024, "Iterative Reasoning Preference Optimization" (RPO,
      arXiv:2404.19733), eq. 1.
    """
    chosen_logps = as_float(chosen_logps)
    counts = as_float(chosen_token_counts)
    check_same_shape("chosen_token_counts", counts, "chosen_logps", chosen_logps)
    return LossTerm(-jnp.sum(chosen_logps), jnp.sum(counts))


def _check_sequence_logps(name: str, x: ArrayLike | None, ref: Array) -> Array:
    x = as_float(x)
    check_same_shape(name, x, "policy_chosen_logps", ref)
    return x


def compute_dpo_loss(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike | None = None,
    ref_rejected_logps: ArrayLike | None = None,
    *,
    beta: float | Array = 0.1,
    label_smoothing: float | Array = 0.0,
    loss_type: str = "sigmoid",
    reference_free: bool = False,
    simpo_gamma: float | Array = 0.5,
    chosen_lengths: ArrayLike | None = None,
    rejected_lengths: ArrayLike | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Direct Preference Optimization loss (batch mean) and its implicit-reward metrics.

    ``reference_free=False``: :func:`dpo_loss_per_pair` of
    ``h = (pi_c - pi_r) - (ref_c - ref_r)``. ``reference_free=True`` is SimPO:
    :func:`simpo_loss_per_pair` (lengths required; only
    ``loss_type="sigmoid"``; reference log-probs are ignored).

    Args:
      policy_chosen_logps, policy_rejected_logps: ``(B,)`` sequence log-probs.
      ref_chosen_logps, ref_rejected_logps: ``(B,)``, required without
        ``reference_free``.
      beta, label_smoothing, loss_type: see :func:`dpo_loss_per_pair`.
      reference_free, simpo_gamma, chosen_lengths, rejected_lengths: SimPO.

    Returns:
      ``(loss, metrics)``: ``loss`` is the batch mean; metrics (batch means,
      no gradient) are ``chosen_reward = beta * (pi_c - ref_c)``,
      ``rejected_reward = beta * (pi_r - ref_r)``, ``reward_margin`` (their
      difference) and ``reward_accuracy = mean(chosen_reward > rejected_reward)``.
      For SimPO the rewards are ``beta * c`` and ``beta * r``.

    References:
      Rafailov et al. 2023 (arXiv:2305.18290); Meng et al. 2024 (arXiv:2405.14734).
    """
    check_choice("loss_type", loss_type, DPO_LOSS_TYPES)
    _check_label_smoothing(label_smoothing, loss_type)
    pi_c = as_float(policy_chosen_logps)
    if pi_c.ndim != 1:
        raise ValueError(f"policy_chosen_logps has shape {pi_c.shape}, expected (B,) sequence log-probs")
    pi_r = _check_sequence_logps("policy_rejected_logps", policy_rejected_logps, pi_c)

    if reference_free:
        if loss_type != "sigmoid":
            raise ValueError(f"reference_free=True (SimPO) uses loss_type='sigmoid', got {loss_type!r}")
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(
                "reference_free=True (SimPO) length-normalises the log-probs: pass chosen_lengths and "
                f"rejected_lengths, each of shape {pi_c.shape}"
            )
        len_c = jnp.maximum(_check_sequence_logps("chosen_lengths", chosen_lengths, pi_c), 1.0)
        len_r = jnp.maximum(_check_sequence_logps("rejected_lengths", rejected_lengths, pi_c), 1.0)
        losses = simpo_loss_per_pair(pi_c, pi_r, len_c, len_r, beta, simpo_gamma, label_smoothing)
        chosen_rewards = beta * (pi_c / len_c)
        rejected_rewards = beta * (pi_r / len_r)
    else:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError(
                "DPO needs ref_chosen_logps and ref_rejected_logps (each of shape "
                f"{pi_c.shape}); pass reference_free=True for SimPO"
            )
        ref_c = _check_sequence_logps("ref_chosen_logps", ref_chosen_logps, pi_c)
        ref_r = _check_sequence_logps("ref_rejected_logps", ref_rejected_logps, pi_c)
        losses = dpo_loss_per_pair((pi_c - pi_r) - (ref_c - ref_r), beta, loss_type, label_smoothing)
        chosen_rewards = beta * (pi_c - ref_c)
        rejected_rewards = beta * (pi_r - ref_r)

    chosen_rewards = lax.stop_gradient(chosen_rewards)
    rejected_rewards = lax.stop_gradient(rejected_rewards)
    metrics = {
        "chosen_reward": jnp.mean(chosen_rewards),
        "rejected_reward": jnp.mean(rejected_rewards),
        "reward_margin": jnp.mean(chosen_rewards - rejected_rewards),
        "reward_accuracy": jnp.mean((chosen_rewards > rejected_rewards).astype(chosen_rewards.dtype)),
    }
    return jnp.mean(losses), metrics


__all__ = [
    "DPO_LOSS_TYPES",
    "chosen_nll_term",
    "compute_dpo_loss",
    "dpo_loss_per_pair",
    "simpo_loss_per_pair",
]
