"""Pure, jittable building blocks shared by the RL trainers.

Every function here is a small pure function of arrays: no state, no Python
loops over time (recursions over time are ``lax.scan``), and shape checks that
run at trace time because shapes are static. Anything that needs a
hyper-parameter as a *Python* value (``group_size``, ``loss_type``,
``estimator``) says so; everything else may be a traced value.

Conventions
-----------
* **Time is the last axis.** A trajectory is ``(T,)``; a batch of
  trajectories is ``(B, T)`` (any number of leading batch axes works).
* **Dones.** ``dones[..., t] = 1`` means the episode ends *after* step ``t``:
  nothing is bootstrapped or carried over from ``t + 1`` into ``t``. One
  row may therefore hold several episodes back to back.
* **Masks** are read as booleans (non-zero = valid) and must broadcast to the
  masked array. Masked entries are *selected out* with ``jnp.where``, never
  multiplied by zero, so ``inf``/``NaN`` padding cannot leak into a value
  (``0 * inf`` is ``NaN``). Gradients are another matter: a NaN computed
  from the parameters at a padded position still poisons the gradient through
  ``where``, so keep padded *model outputs* finite. Means over an empty
  selection are ``0``, not NaN.
* **Stability clamps.** Log-ratios are clamped at :data:`MAX_LOG_RATIO`
  before ``exp`` (both sides for the PPO ratio, from above for the k3 KL
  estimator; see each function); low-precision inputs (bf16/f16) are
  promoted to at least float32 first.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
ArrayLike = Any

#: Bound on log-ratios ``log(p / q)`` fed to ``exp``: ``exp(20) ~ 4.9e8`` is
#: comfortably finite in float32 (which overflows at ``exp(88.7)``), while any
#: ratio beyond it is far outside every trust region these losses use, so the
#: clamp changes no sane update.
MAX_LOG_RATIO = 20.0

GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
KL_ESTIMATORS = ("k1", "k2", "k3")
SCALE_REWARDS = ("group", "batch", "none")
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust")


# --------------------------------------------------------------------------- #
# Small private helpers
# --------------------------------------------------------------------------- #


def _as_float(x: ArrayLike) -> Array:
    """``x`` as a floating array of at least float32 precision."""
    x = jnp.asarray(x)
    dtype = jnp.promote_types(x.dtype, jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    return x.astype(dtype)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_same_shape(name: str, x: Array, ref_name: str, ref: Array) -> None:
    if jnp.shape(x) != jnp.shape(ref):
        raise ValueError(
            f"{name} has shape {jnp.shape(x)}, expected {jnp.shape(ref)} (the shape of {ref_name})"
        )


def _valid_mask(mask: ArrayLike | None, shape: tuple[int, ...], name: str = "mask") -> Array | None:
    """``mask`` as a boolean array broadcast to ``shape`` (or ``None``)."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    try:
        return jnp.broadcast_to(mask.astype(bool), shape)
    except ValueError:
        raise ValueError(
            f"{name} has shape {mask.shape}, expected a shape broadcastable to {shape}"
        ) from None


def _time_major(x: Array) -> Array:
    """``(..., T) -> (T, ...)``: ``lax.scan`` walks the leading axis."""
    return jnp.moveaxis(x, -1, 0)


def _time_last(x: Array) -> Array:
    return jnp.moveaxis(x, 0, -1)


def _check_time_series(name: str, x: Array) -> None:
    if x.ndim < 1:
        raise ValueError(f"{name} has shape {x.shape}, expected (T,) or (B, T) with time on the last axis")


def _not_done(dones: ArrayLike | None, rewards: Array) -> Array:
    """``1 - dones`` in the dtype of ``rewards`` (all ones when ``dones`` is None)."""
    if dones is None:
        return jnp.ones_like(rewards)
    dones = jnp.asarray(dones)
    _check_same_shape("dones", dones, "rewards", rewards)
    return 1.0 - dones.astype(rewards.dtype)


@jax.jit
def _reverse_recurrence(x: Array, discounts: Array) -> Array:
    """``y_t = x_t + discounts_t * y_{t+1}``, ``y_T = 0``, over the last axis.

    The one recursion behind discounted returns and GAE, as a reverse
    ``lax.scan``. Jitted at module level so eager callers (batch preparation
    outside the compiled step) hit the compilation cache instead of
    re-tracing and re-compiling the scan on every call; inside an outer
    ``jit`` it is simply inlined.
    """

    def step(next_y: Array, xs: tuple[Array, Array]) -> tuple[Array, Array]:
        x_t, discount_t = xs
        # Select rather than multiply: across an episode end (discount 0) a
        # NaN/inf in padding after it must not leak back as 0 * NaN.
        y_t = x_t + jnp.where(discount_t == 0, 0.0, discount_t * next_y)
        return y_t, y_t

    init = jnp.zeros(x.shape[:-1], x.dtype)
    _, ys = lax.scan(step, init, (_time_major(x), _time_major(discounts.astype(x.dtype))), reverse=True)
    return _time_last(ys)


# --------------------------------------------------------------------------- #
# Masked reductions
# --------------------------------------------------------------------------- #


def masked_sum(x: ArrayLike, mask: ArrayLike | None = None, axis: int | Sequence[int] | None = None) -> Array:
    """Sum of the valid entries of ``x``.

    Args:
      x: any shape.
      mask: broadcastable to ``x``; non-zero = valid. ``None``: all valid.
      axis: axes to reduce (``None``: all).

    Returns:
      ``sum(where(mask, x, 0), axis)``. Invalid entries are selected out, so
      ``inf``/``NaN`` padding does not propagate.
    """
    x = jnp.asarray(x)
    valid = _valid_mask(mask, x.shape)
    if valid is None:
        return jnp.sum(x, axis=axis)
    return jnp.sum(jnp.where(valid, x, 0), axis=axis)


def masked_count(
    x: ArrayLike, mask: ArrayLike | None = None, axis: int | Sequence[int] | None = None
) -> Array:
    """Number of valid entries of ``x`` along ``axis`` (float, like ``x``)."""
    x = jnp.asarray(x)
    valid = _valid_mask(mask, x.shape)
    if valid is None:
        valid = jnp.ones(x.shape, bool)
    return jnp.sum(valid, axis=axis).astype(_as_float(x).dtype)


def masked_mean(
    x: ArrayLike, mask: ArrayLike | None = None, axis: int | Sequence[int] | None = None
) -> Array:
    """Mean of the valid entries of ``x``.

    Args:
      x: any shape.
      mask: broadcastable to ``x``; non-zero = valid. ``None``: plain mean.
      axis: axes to reduce (``None``: all).

    Returns:
      ``masked_sum(x, mask, axis) / max(count, 1)``: an all-masked slice
      gives ``0`` instead of ``0 / 0 = NaN``.
    """
    x = _as_float(x)
    if mask is None:
        return jnp.mean(x, axis=axis)
    return masked_sum(x, mask, axis) / jnp.maximum(masked_count(x, mask, axis), 1.0)


def _masked_max(x: Array, valid: Array | None) -> Array:
    return jnp.max(x if valid is None else jnp.where(valid, x, -jnp.inf))


def _masked_min(x: Array, valid: Array | None) -> Array:
    return jnp.min(x if valid is None else jnp.where(valid, x, jnp.inf))


def normalize_advantages(x: ArrayLike, mask: ArrayLike | None = None, eps: float = 1e-8) -> Array:
    """Standardise ``x`` over its valid entries.

    ``(x - mean) / (std + eps)`` with ``mean`` and the population ``std``
    (``ddof=0``) taken over valid entries only. Masked entries come out as
    exactly ``0``. If every valid entry is equal the output is exactly ``0``
    too: ``x - mean`` would otherwise be float round-off, blown up by a tiny
    ``std``.

    Args:
      x: any shape.
      mask: broadcastable to ``x``; non-zero = valid. ``None``: all valid.
      eps: added to the std.

    Returns:
      Array of the shape of ``x``.
    """
    x = _as_float(x)
    valid = _valid_mask(mask, x.shape)
    mean = masked_mean(x, valid)
    centered = x - mean
    std = jnp.sqrt(masked_mean(jnp.square(centered), valid))
    out = centered / (std + eps)
    constant = _masked_max(x, valid) == _masked_min(x, valid)
    out = jnp.where(constant, 0.0, out)
    return out if valid is None else jnp.where(valid, out, 0.0)


def aggregate_token_loss(per_token: ArrayLike, mask: ArrayLike | None, loss_type: str = "grpo") -> Array:
    """Reduce a per-token loss ``(B, T)`` to a scalar, GRPO-family style.

    With ``m`` the mask, ``n_b = sum_t m[b, t]`` and ``T = per_token.shape[1]``:

    * ``"grpo"``: ``mean_b( sum_t m*l / max(n_b, 1) )`` -- each sequence's
      token mean, then the mean over sequences (DeepSeekMath). A sequence with
      no valid token contributes ``0`` and still counts in the outer mean.
    * ``"bnpo"``: ``sum_{b,t} m*l / max(sum_b n_b, 1)`` -- one mean over all
      valid tokens in the batch (every token weighs the same).
    * ``"dr_grpo"``: ``sum_{b,t} m*l / (B * T)`` -- a constant normaliser, so
      no length bias (Dr. GRPO, Liu et al. 2025).

    Args:
      per_token: ``(B, T)`` per-token loss.
      mask: ``(B, T)`` (or broadcastable), non-zero = valid token; ``None``:
        all valid.
      loss_type: one of :data:`GRPO_LOSS_TYPES` (a Python string).
    """
    _check_choice("loss_type", loss_type, GRPO_LOSS_TYPES)
    per_token = _as_float(per_token)
    if per_token.ndim != 2:
        raise ValueError(f"per_token has shape {per_token.shape}, expected (B, T)")
    valid = _valid_mask(mask, per_token.shape)
    if loss_type == "grpo":
        return jnp.mean(masked_mean(per_token, valid, axis=1))
    if loss_type == "bnpo":
        return masked_mean(per_token, valid)
    batch, length = per_token.shape
    return masked_sum(per_token, valid) / (batch * length)


# --------------------------------------------------------------------------- #
# Returns and advantages
# --------------------------------------------------------------------------- #


def compute_discounted_returns(
    rewards: ArrayLike, gamma: float | Array, dones: ArrayLike | None = None
) -> Array:
    """Discounted returns, reset at episode ends.

    ``G_t = r_t + gamma * (1 - done_t) * G_{t+1}`` with ``G_T = 0``, i.e.
    ``G_t = sum_{k>=t} gamma^(k-t) r_k`` up to and including the first step
    ``k >= t`` whose ``done_k = 1``.

    Args:
      rewards: ``(T,)`` one time-ordered trajectory (possibly several
        episodes separated by dones) or ``(B, T)`` ``B`` trajectories; time is
        the last axis.
      gamma: discount factor.
      dones: like ``rewards`` (bool or float); ``dones[t] = 1`` ends the
        episode after step ``t``. ``None``: no episode ends inside the data
        (and nothing is bootstrapped after the last step).

    Returns:
      ``G`` with the shape of ``rewards`` (float).
    """
    rewards = _as_float(rewards)
    _check_time_series("rewards", rewards)
    return _reverse_recurrence(rewards, gamma * _not_done(dones, rewards))


def _split_values(values: Array, rewards: Array, last_value: ArrayLike | None) -> tuple[Array, Array]:
    """``(V_t, V_{t+1})``, each shaped like ``rewards``, from the accepted layouts."""
    steps = rewards.shape[-1]
    if values.shape[:-1] != rewards.shape[:-1] or values.shape[-1] not in (steps, steps + 1):
        raise ValueError(
            f"values has shape {values.shape}, expected {rewards.shape[:-1] + (steps + 1,)} "
            f"(with the bootstrap value V(s_T) last) or {rewards.shape} (rewards has shape {rewards.shape})"
        )
    if values.shape[-1] == steps + 1:
        if last_value is not None:
            raise ValueError(
                f"values has shape {values.shape} (T+1 entries, already holding V(s_T)) and last_value "
                "was given too; pass one or the other"
            )
        return values[..., :-1], values[..., 1:]
    if last_value is None:
        bootstrap = jnp.zeros(rewards.shape[:-1] + (1,), values.dtype)
    else:
        last_value = _as_float(last_value)
        if last_value.shape != rewards.shape[:-1]:
            raise ValueError(f"last_value has shape {last_value.shape}, expected {rewards.shape[:-1]}")
        bootstrap = last_value[..., None].astype(values.dtype)
    return values, jnp.concatenate([values[..., 1:], bootstrap], axis=-1)


def compute_gae_advantages(
    rewards: ArrayLike,
    values: ArrayLike,
    dones: ArrayLike | None,
    gamma: float | Array,
    gae_lambda: float | Array,
    last_value: ArrayLike | None = None,
) -> Array:
    """Generalized Advantage Estimation (Schulman et al. 2016).

    ``delta_t = r_t + gamma * V_{t+1} * (1 - done_t) - V_t``
    ``A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}``, ``A_T = 0``.

    Args:
      rewards: ``(T,)`` or ``(B, T)``; time is the last axis.
      values: ``V(s_t)`` in one of two layouts:

        * ``(..., T + 1)``: the last entry is ``V(s_T)``, the bootstrap value
          of the state after the last step;
        * ``(..., T)``: ``V(s_T)`` is ``last_value`` if given, else ``0``
          (as if the data ended in a terminal state).
      dones: like ``rewards``; ``dones[t] = 1`` ends the episode after step
        ``t`` (``V_{t+1}`` then belongs to the next episode and is not used).
        ``None``: no episode ends inside the data.
      gamma: discount factor.
      gae_lambda: GAE ``lambda``; ``0`` gives TD(0) errors, ``1`` gives
        Monte-Carlo returns minus ``V_t``.
      last_value: ``()`` or ``(B,)`` (``rewards.shape[:-1]``): ``V(s_T)``
        when ``values`` has ``T`` entries. An error with ``T + 1`` values.

    Returns:
      Advantages with the shape of ``rewards``. The value targets are
      ``advantages + V_t``: see :func:`compute_gae_returns`.
    """
    rewards = _as_float(rewards)
    _check_time_series("rewards", rewards)
    values = _as_float(values)
    value_t, value_next = _split_values(values, rewards, last_value)
    not_done = _not_done(dones, rewards)
    deltas = rewards + jnp.where(not_done == 0, 0.0, gamma * value_next * not_done) - value_t
    return _reverse_recurrence(deltas, gamma * gae_lambda * not_done)


def compute_gae_returns(advantages: ArrayLike, values: ArrayLike) -> Array:
    """Value targets (lambda-returns) from GAE advantages: ``R_t = A_t + V_t``.

    Args:
      advantages: ``(..., T)`` from :func:`compute_gae_advantages`.
      values: ``(..., T + 1)`` or ``(..., T)``, the same array given to
        :func:`compute_gae_advantages` (only its first ``T`` entries are used).

    Returns:
      Returns with the shape of ``advantages``.
    """
    advantages = _as_float(advantages)
    values = _as_float(values)
    steps = advantages.shape[-1]
    if values.shape[:-1] != advantages.shape[:-1] or values.shape[-1] not in (steps, steps + 1):
        raise ValueError(
            f"values has shape {values.shape}, expected {advantages.shape} or "
            f"{advantages.shape[:-1] + (steps + 1,)} (advantages has shape {advantages.shape})"
        )
    return advantages + values[..., :steps]


def compute_gae(
    rewards: ArrayLike,
    values: ArrayLike,
    dones: ArrayLike | None,
    gamma: float | Array,
    gae_lambda: float | Array,
    last_value: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """``(advantages, returns)``: :func:`compute_gae_advantages` then :func:`compute_gae_returns`."""
    advantages = compute_gae_advantages(rewards, values, dones, gamma, gae_lambda, last_value)
    return advantages, compute_gae_returns(advantages, values)


def compute_group_advantages(
    rewards: ArrayLike,
    group_size: int,
    scale_rewards: str = "group",
    eps: float = 1e-4,
) -> tuple[Array, dict[str, Array]]:
    """Group-relative advantages (GRPO, Shao et al. 2024).

    ``rewards`` is split into consecutive groups of ``group_size`` (the
    completions of one prompt): group ``g`` is ``rewards[g*G:(g+1)*G]``.
    With ``mu_g`` the group mean and ``sigma`` a population std (``ddof=0``):

    * ``"group"``: ``A = (r - mu_g) / (sigma_g + eps)`` (GRPO);
    * ``"batch"``: ``A = (r - mu_g) / (sigma_batch + eps)``, one std over all
      rewards (more robust when groups are small);
    * ``"none"``: ``A = r - mu_g`` (Dr. GRPO).

    A group whose rewards are all equal gets advantages of exactly ``0.0``
    (decided by ``max == min``, not by the std, so the mean's round-off
    cannot leak through as a spurious signal).

    Args:
      rewards: ``(B,)`` with ``B`` a multiple of ``group_size``.
      group_size: Python int ``G >= 1``.
      scale_rewards: one of :data:`SCALE_REWARDS` (a Python string).
      eps: added to the std before dividing.

    Returns:
      ``(advantages (B,), metrics)`` with metrics:
      ``frac_reward_zero_std`` (fraction of groups whose rewards are all
      equal: no learning signal), ``group_advantage_std`` (population std of
      the advantages over the batch) and ``reward_std`` (mean over groups of
      the within-group reward std).
    """
    _check_choice("scale_rewards", scale_rewards, SCALE_REWARDS)
    rewards = _as_float(rewards)
    if rewards.ndim != 1:
        raise ValueError(
            f"rewards has shape {rewards.shape}, expected (B,) with B = num_prompts * group_size"
        )
    try:
        group_size = operator.index(group_size)
    except TypeError:
        raise ValueError(f"group_size must be a Python int (it fixes a shape), got {group_size!r}") from None
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards has shape {rewards.shape}, expected (num_prompts * group_size,) = (k * {group_size},); "
            f"{rewards.shape[0]} is not a multiple of group_size={group_size}"
        )
    grouped = rewards.reshape(-1, group_size)
    degenerate = jnp.max(grouped, axis=1) == jnp.min(grouped, axis=1)
    deviation = grouped - jnp.mean(grouped, axis=1, keepdims=True)
    group_std = jnp.sqrt(jnp.mean(jnp.square(deviation), axis=1))
    if scale_rewards == "group":
        scaled = deviation / (group_std[:, None] + eps)
    elif scale_rewards == "batch":
        scaled = deviation / (jnp.std(rewards) + eps)
    else:
        scaled = deviation
    advantages = jnp.where(degenerate[:, None], 0.0, scaled).reshape(-1)
    metrics = {
        "frac_reward_zero_std": jnp.mean(degenerate.astype(rewards.dtype)),
        "group_advantage_std": jnp.std(advantages),
        "reward_std": jnp.mean(jnp.where(degenerate, 0.0, group_std)),
    }
    return advantages, metrics


# --------------------------------------------------------------------------- #
# Entropy and KL
# --------------------------------------------------------------------------- #


def _categorical_entropy(logits: Array) -> Array:
    logp = jax.nn.log_softmax(_as_float(logits), axis=-1)
    p = jnp.exp(logp)
    # Double where: p * logp at a -inf logit is 0 * -inf, whose *gradient* is
    # NaN even when the forward value is selected out. Zero logp there first.
    safe_logp = jnp.where(p > 0, logp, 0.0)
    return -jnp.sum(p * safe_logp, axis=-1)


def compute_policy_entropy(logits: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """Mean entropy of categorical distributions given by ``logits``.

    ``H = -sum_a p_a log p_a`` with ``p = softmax(logits)`` over the last
    axis, then the mean over valid positions. ``-inf`` logits (masked
    actions) are fine, in value and in gradient.

    Args:
      logits: ``(..., A)``.
      mask: broadcastable to ``logits.shape[:-1]``; non-zero = valid.

    Returns:
      Scalar masked mean entropy.
    """
    logits = jnp.asarray(logits)
    if logits.ndim < 1:
        raise ValueError(f"logits has shape {logits.shape}, expected (..., A)")
    return masked_mean(_categorical_entropy(logits), mask)


def compute_kl_divergence(
    logp: ArrayLike,
    ref_logp: ArrayLike,
    estimator: str = "k3",
    mask: ArrayLike | None = None,
    *,
    reduce: bool = True,
    max_log_ratio: float = MAX_LOG_RATIO,
) -> Array:
    """Sample estimate of ``KL(pi || ref)`` from log-probs of sampled actions.

    With ``d = ref_logp - logp`` (actions sampled from ``pi``), following
    Schulman's "Approximating KL divergence" (2020):

    * ``"k1"``: ``-d = logp - ref_logp`` -- unbiased, high variance, can be
      negative;
    * ``"k2"``: ``0.5 * d**2`` -- biased, low variance, ``>= 0``;
    * ``"k3"``: ``exp(d) - d - 1`` -- unbiased, low variance, ``>= 0``.

    Stability: for ``"k3"`` only, ``d`` is clamped from *above* at
    ``max_log_ratio`` (default 20) before use, because ``exp(d)`` overflows
    float32 for ``d > 88``. Beyond the clamp k3 saturates at
    ``k3(20) ~ 4.9e8`` with zero gradient. No lower clamp is needed
    (``exp(d) -> 0`` and ``k3 ~ -d - 1`` keeps its pull back towards ``ref``).
    ``"k1"`` and ``"k2"`` are polynomials in ``d`` and are left exact.

    Args:
      logp: log-probs of the sampled actions under the policy, any shape.
      ref_logp: same shape, under the reference policy.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (a Python string).
      mask: broadcastable to ``logp``; non-zero = valid.
      reduce: ``True`` (default): the masked mean, a scalar. ``False``: the
        per-element values, shape of ``logp``, with masked entries set to 0
        (for callers that aggregate themselves, e.g. per token).
      max_log_ratio: the k3 clamp.
    """
    _check_choice("estimator", estimator, KL_ESTIMATORS)
    logp = _as_float(logp)
    ref_logp = _as_float(ref_logp)
    _check_same_shape("ref_logp", ref_logp, "logp", logp)
    d = ref_logp - logp
    if estimator == "k1":
        kl = -d
    elif estimator == "k2":
        kl = 0.5 * jnp.square(d)
    else:
        d = jnp.minimum(d, max_log_ratio)
        # expm1(d) - d keeps precision for small |d| where exp(d) - 1 cancels.
        kl = jnp.expm1(d) - d
    if reduce:
        return masked_mean(kl, mask)
    valid = _valid_mask(mask, kl.shape)
    return kl if valid is None else jnp.where(valid, kl, 0.0)


def compute_kl_from_logits(
    logits: ArrayLike,
    ref_logits: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    reduce: bool = True,
) -> Array:
    """Exact ``KL(pi || ref) = sum_a p_a (log p_a - log q_a)`` over the last axis.

    ``p = softmax(logits)``, ``q = softmax(ref_logits)``. Actions with
    ``p_a = 0`` contribute exactly 0 (also in the gradient), even where
    ``q_a = 0``; an action with ``p_a > 0 = q_a`` makes the KL ``inf``.

    Args:
      logits: ``(..., A)`` policy logits.
      ref_logits: ``(..., A)`` reference logits.
      mask: broadcastable to ``logits.shape[:-1]``; non-zero = valid.
      reduce: ``True`` (default): masked mean scalar; ``False``: per-position
        KL ``logits.shape[:-1]`` with masked positions set to 0.
    """
    logits = _as_float(logits)
    ref_logits = _as_float(ref_logits)
    _check_same_shape("ref_logits", ref_logits, "logits", logits)
    if logits.ndim < 1:
        raise ValueError(f"logits has shape {logits.shape}, expected (..., A)")
    logp = jax.nn.log_softmax(logits, axis=-1)
    ref_logp = jax.nn.log_softmax(ref_logits, axis=-1)
    p = jnp.exp(logp)
    log_ratio = jnp.where(p > 0, logp - ref_logp, 0.0)
    kl = jnp.sum(p * log_ratio, axis=-1)
    if reduce:
        return masked_mean(kl, mask)
    valid = _valid_mask(mask, kl.shape)
    return kl if valid is None else jnp.where(valid, kl, 0.0)


# --------------------------------------------------------------------------- #
# PPO clipped surrogate
# --------------------------------------------------------------------------- #


def _broadcast_advantages(advantages: Array, log_probs: Array) -> Array:
    """Per-sequence advantages ``(B,)`` broadcast over trailing token axes ``(B, T)``.

    Only a *prefix* match is accepted: plain numpy broadcasting would align
    ``(B,)`` with the last axis of ``(B, T)`` and silently be wrong when
    ``B == T``.
    """
    if advantages.shape == log_probs.shape:
        return advantages
    if advantages.ndim < log_probs.ndim and advantages.shape == log_probs.shape[: advantages.ndim]:
        return advantages.reshape(advantages.shape + (1,) * (log_probs.ndim - advantages.ndim))
    raise ValueError(
        f"advantages has shape {advantages.shape}, expected {log_probs.shape} (the shape of log_probs) "
        f"or a prefix of it such as {log_probs.shape[:1]}"
    )


def _log_ratio(log_probs: ArrayLike, old_log_probs: ArrayLike) -> Array:
    log_probs = _as_float(log_probs)
    old_log_probs = _as_float(old_log_probs)
    _check_same_shape("old_log_probs", old_log_probs, "log_probs", log_probs)
    return jnp.clip(log_probs - old_log_probs, -MAX_LOG_RATIO, MAX_LOG_RATIO)


def clipped_surrogate_per_element(
    log_probs: ArrayLike,
    old_log_probs: ArrayLike,
    advantages: ArrayLike,
    clip_param: float | Array,
    clip_param_high: float | Array | None = None,
) -> Array:
    """Per-element PPO clipped surrogate loss (to minimise).

    ``ratio = exp(clamp(logp - old_logp, -20, 20))``,
    ``loss = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A)``.

    The log-ratio clamp (:data:`MAX_LOG_RATIO`) keeps ``exp`` finite; it only
    acts on ratios ``> 4.9e8`` or ``< 2e-9``, where the clipped objective has
    (almost) no gradient anyway, and zeroes the gradient there.

    Args:
      log_probs: log-probs of the taken actions under the current policy,
        any shape, e.g. ``(B,)`` or per token ``(B, T)``.
      old_log_probs: same shape, under the policy that collected the data.
      advantages: the shape of ``log_probs``, or a prefix of it (``(B,)``
        for ``(B, T)`` log-probs: one advantage per sequence).
      clip_param: ``eps``, the lower clip ``1 - eps``.
      clip_param_high: ``eps_high`` for the upper clip ``1 + eps_high``
        (DAPO's clip-higher); ``None``: ``clip_param``.

    Returns:
      Per-element loss with the shape of ``log_probs``.
    """
    log_ratio = _log_ratio(log_probs, old_log_probs)
    advantages = _broadcast_advantages(_as_float(advantages), log_ratio)
    eps_high = clip_param if clip_param_high is None else clip_param_high
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - clip_param, 1.0 + eps_high)
    return -jnp.minimum(ratio * advantages, clipped * advantages)


def clipped_surrogate_metrics(
    log_probs: ArrayLike,
    old_log_probs: ArrayLike,
    clip_param: float | Array,
    mask: ArrayLike | None = None,
    clip_param_high: float | Array | None = None,
) -> dict[str, Array]:
    """Diagnostics of a PPO update, masked means over valid elements.

    * ``clip_fraction``: fraction of ratios outside ``[1 - eps, 1 + eps_high]``
      (the trust region), regardless of the advantage's sign.
    * ``approx_kl``: the k3 estimate of ``KL(old || new)`` from samples of
      the old policy, ``(ratio - 1) - log(ratio)``.

    Same arguments and log-ratio clamp as :func:`clipped_surrogate_per_element`.
    """
    log_ratio = _log_ratio(log_probs, old_log_probs)
    eps_high = clip_param if clip_param_high is None else clip_param_high
    ratio = jnp.exp(log_ratio)
    clipped = (ratio < 1.0 - clip_param) | (ratio > 1.0 + eps_high)
    return {
        "clip_fraction": masked_mean(clipped.astype(ratio.dtype), mask),
        "approx_kl": masked_mean(jnp.expm1(log_ratio) - log_ratio, mask),
    }


def compute_clipped_surrogate_loss(
    log_probs: ArrayLike,
    old_log_probs: ArrayLike,
    advantages: ArrayLike,
    clip_param: float | Array,
    mask: ArrayLike | None = None,
    clip_param_high: float | Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """PPO clipped surrogate loss, masked mean over valid elements.

    ``loss = masked_mean(-min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A))``
    with ``ratio = exp(clamp(logp - old_logp, -20, 20))``; see
    :func:`clipped_surrogate_per_element` for the arguments. For GRPO's
    per-sequence token averaging use the per-element loss with
    :func:`aggregate_token_loss` instead.

    Returns:
      ``(loss, metrics)``: the scalar loss and
      ``{"clip_fraction", "approx_kl"}`` from :func:`clipped_surrogate_metrics`.
    """
    per_element = clipped_surrogate_per_element(
        log_probs, old_log_probs, advantages, clip_param, clip_param_high
    )
    metrics = clipped_surrogate_metrics(log_probs, old_log_probs, clip_param, mask, clip_param_high)
    return masked_mean(per_element, mask), metrics


# --------------------------------------------------------------------------- #
# DPO family
# --------------------------------------------------------------------------- #


def _smoothed_sigmoid_loss(z: Array, label_smoothing: float | Array) -> Array:
    """``-(1 - ls) log sigma(z) - ls log sigma(-z)``: BCE against label ``1 - ls``."""
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)


def _check_sequence_logps(name: str, x: ArrayLike | None, ref: Array) -> Array:
    x = _as_float(x)
    _check_same_shape(name, x, "policy_chosen_logps", ref)
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
    """Direct Preference Optimization loss and its implicit-reward metrics.

    Inputs are sequence log-probs ``(B,)``: sums of per-token log-probs over
    each completion. With ``pi_*`` the policy's and ``ref_*`` the reference's
    and ``ls = label_smoothing``:

    ``logits = (pi_c - pi_r) - (ref_c - ref_r)``

    * ``"sigmoid"`` (DPO, Rafailov et al. 2023; ``ls > 0`` is conservative
      DPO): ``-(1 - ls) log sigma(beta * logits) - ls log sigma(-beta * logits)``
    * ``"hinge"`` (SLiC): ``relu(1 - beta * logits)``
    * ``"ipo"`` (Azar et al. 2023): ``(logits - 1 / (2 beta))**2``, on the
      logits as given (sums, not length-averaged; average the log-probs
      yourself to follow the paper exactly).
    * ``"robust"`` (Chowdhury et al. 2024), ``ls < 0.5``:
      ``((1 - ls)(-log sigma(beta * logits)) + ls log sigma(-beta * logits)) / (1 - 2 ls)``

    ``reference_free=True`` is SimPO (Meng et al. 2024): no reference model,
    length-normalised policy log-probs ``c = pi_c / |y_c|``,
    ``r = pi_r / |y_r|`` (lengths required; clamped to ``>= 1``) and
    ``loss = -(1 - ls) log sigma(z) - ls log sigma(-z)`` with
    ``z = beta * (c - r) - simpo_gamma``. Only ``loss_type="sigmoid"`` is
    defined for it; reference log-probs are ignored.

    ``label_smoothing`` is used by ``sigmoid``, ``robust`` and SimPO; with
    ``hinge``/``ipo`` a non-zero value is an error rather than silently ignored.

    Returns:
      ``(loss, metrics)``: ``loss`` is the batch mean; metrics (batch means,
      no gradient) are ``chosen_reward = beta * (pi_c - ref_c)``,
      ``rejected_reward = beta * (pi_r - ref_r)``, ``reward_margin`` (their
      difference) and ``reward_accuracy = mean(chosen_reward > rejected_reward)``.
      For SimPO the rewards are ``beta * c`` and ``beta * r``.
    """
    _check_choice("loss_type", loss_type, DPO_LOSS_TYPES)
    static_ls = isinstance(label_smoothing, (int, float))
    if static_ls and not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if static_ls and loss_type == "robust" and label_smoothing >= 0.5:
        raise ValueError(
            f"loss_type='robust' needs label_smoothing < 0.5 (divides by 1 - 2*ls), got {label_smoothing}"
        )
    if static_ls and loss_type in ("hinge", "ipo") and label_smoothing != 0.0:
        raise ValueError(f"label_smoothing is not defined for loss_type={loss_type!r}; got {label_smoothing}")

    pi_c = _as_float(policy_chosen_logps)
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
        chosen_rewards = beta * (pi_c / len_c)
        rejected_rewards = beta * (pi_r / len_r)
        losses = _smoothed_sigmoid_loss(chosen_rewards - rejected_rewards - simpo_gamma, label_smoothing)
    else:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError(
                "DPO needs ref_chosen_logps and ref_rejected_logps (each of shape "
                f"{pi_c.shape}); pass reference_free=True for SimPO"
            )
        ref_c = _check_sequence_logps("ref_chosen_logps", ref_chosen_logps, pi_c)
        ref_r = _check_sequence_logps("ref_rejected_logps", ref_rejected_logps, pi_c)
        chosen_rewards = beta * (pi_c - ref_c)
        rejected_rewards = beta * (pi_r - ref_r)
        logits = (pi_c - pi_r) - (ref_c - ref_r)
        if loss_type == "sigmoid":
            losses = _smoothed_sigmoid_loss(beta * logits, label_smoothing)
        elif loss_type == "hinge":
            losses = jax.nn.relu(1.0 - beta * logits)
        elif loss_type == "ipo":
            losses = jnp.square(logits - 1.0 / (2.0 * beta))
        else:
            losses = (
                -(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * logits)
                + label_smoothing * jax.nn.log_sigmoid(-beta * logits)
            ) / (1.0 - 2.0 * label_smoothing)

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
    "compute_gae",
    "compute_gae_advantages",
    "compute_gae_returns",
    "compute_group_advantages",
    "compute_kl_divergence",
    "compute_kl_from_logits",
    "compute_policy_entropy",
    "masked_count",
    "masked_mean",
    "masked_sum",
    "normalize_advantages",
]
