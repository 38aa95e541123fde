"""Tests of artifex_rl.rl.utils against independent plain-numpy references.

Each reference is written from the paper definition with explicit Python
loops (forward sums over time, loops over groups and sequences), in float64,
so it shares no code and no recursion trick with the scan-based implementation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifex_rl.rl import utils
from artifex_rl.rl.losses import categorical_kl

RTOL = 1e-5
ATOL = 1e-5
SEEDS = [0, 1, 2]


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol
    )


# --------------------------------------------------------------------------- #
# numpy references
# --------------------------------------------------------------------------- #


def ref_returns_1d(rewards, gamma, dones):
    """G_t = sum_{k=t}^{end} gamma^(k-t) r_k, end = first k >= t with done_k (or T-1)."""
    steps = len(rewards)
    out = np.zeros(steps)
    for t in range(steps):
        total = 0.0
        for k in range(t, steps):
            total += gamma ** (k - t) * rewards[k]
            if dones[k]:
                break
        out[t] = total
    return out


def ref_gae_1d(rewards, values_ext, dones, gamma, lam):
    """A_t = sum_{l>=0} (gamma*lam)^l delta_{t+l}, stopping after the episode's last step.

    ``values_ext`` has T+1 entries (the last is V(s_T)).
    """
    steps = len(rewards)
    deltas = [rewards[t] + gamma * values_ext[t + 1] * (1.0 - dones[t]) - values_ext[t] for t in range(steps)]
    out = np.zeros(steps)
    for t in range(steps):
        total = 0.0
        for k in range(t, steps):
            total += (gamma * lam) ** (k - t) * deltas[k]
            if dones[k]:
                break
        out[t] = total
    return out


def ref_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shift = np.max(logits, axis=-1, keepdims=True)
    return logits - shift - np.log(np.sum(np.exp(logits - shift), axis=-1, keepdims=True))


def ref_log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def ref_masked_mean(values, mask):
    values = np.asarray(values, np.float64).ravel()
    mask = np.asarray(mask).ravel()
    picked = [v for v, m in zip(values, mask, strict=True) if m]
    return sum(picked) / len(picked) if picked else 0.0


def random_dones(rng, shape, p=0.25):
    dones = (rng.random(shape) < p).astype(np.float32)
    # Always exercise an episode end in the middle.
    dones[..., shape[-1] // 2] = 1.0
    return dones


# --------------------------------------------------------------------------- #
# Discounted returns
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("done_at_end", [False, True])
def test_discounted_returns_1d(seed, done_at_end):
    rng = np.random.default_rng(seed)
    steps, gamma = 6, 0.9
    rewards = rng.normal(size=steps).astype(np.float32)
    dones = random_dones(rng, (steps,))
    dones[-1] = float(done_at_end)
    got = utils.compute_discounted_returns(rewards, gamma, dones)
    assert got.shape == (steps,)
    assert_close(got, ref_returns_1d(rewards.astype(np.float64), gamma, dones))


@pytest.mark.parametrize("seed", SEEDS)
def test_discounted_returns_batched(seed):
    rng = np.random.default_rng(seed)
    batch, steps, gamma = 4, 6, 0.97
    rewards = rng.normal(size=(batch, steps)).astype(np.float32)
    dones = random_dones(rng, (batch, steps)).astype(bool)
    got = utils.compute_discounted_returns(rewards, gamma, dones)
    assert got.shape == (batch, steps)
    expected = np.stack([ref_returns_1d(rewards[b], gamma, dones[b]) for b in range(batch)])
    assert_close(got, expected)


def test_discounted_returns_without_dones_is_full_discounted_sum():
    rewards = np.arange(1.0, 6.0, dtype=np.float32)
    got = utils.compute_discounted_returns(rewards, 0.5)
    assert_close(got, ref_returns_1d(rewards, 0.5, np.zeros(5)))
    assert_close(got[0], sum(0.5**k * r for k, r in enumerate(rewards)))


def test_discounted_returns_errors():
    with pytest.raises(ValueError, match=r"dones has shape \(4,\), expected \(5,\)"):
        utils.compute_discounted_returns(jnp.ones(5), 0.9, jnp.zeros(4))
    with pytest.raises(ValueError, match=r"rewards has shape \(\)"):
        utils.compute_discounted_returns(jnp.ones(()), 0.9)


# --------------------------------------------------------------------------- #
# GAE
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("layout", ["T+1", "T+last_value", "T"])
@pytest.mark.parametrize("batched", [False, True])
def test_gae_matches_reference(seed, layout, batched):
    rng = np.random.default_rng(seed)
    batch, steps, gamma, lam = 4, 6, 0.95, 0.8
    lead = (batch,) if batched else ()
    rewards = rng.normal(size=lead + (steps,)).astype(np.float32)
    dones = random_dones(rng, lead + (steps,))
    dones[..., -1] = rng.random(lead) < 0.5  # done at the end in some rows only
    values_ext = rng.normal(size=lead + (steps + 1,)).astype(np.float32)
    if layout == "T+1":
        values, last_value = values_ext, None
    elif layout == "T+last_value":
        values, last_value = values_ext[..., :steps], values_ext[..., steps]
    else:
        values, last_value = values_ext[..., :steps], None
        values_ext = values_ext.copy()
        values_ext[..., steps] = 0.0  # documented: no bootstrap value means V(s_T) = 0

    got = utils.compute_gae_advantages(rewards, values, dones, gamma, lam, last_value=last_value)
    rows_r = rewards.reshape(-1, steps)
    rows_v = values_ext.reshape(-1, steps + 1)
    rows_d = dones.reshape(-1, steps)
    expected = np.stack(
        [ref_gae_1d(r, v, d, gamma, lam) for r, v, d in zip(rows_r, rows_v, rows_d, strict=True)]
    )
    assert got.shape == rewards.shape
    assert_close(got, expected.reshape(rewards.shape))

    returns = utils.compute_gae_returns(got, values)
    assert_close(returns, expected.reshape(rewards.shape) + values_ext[..., :steps])


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_lambda_extremes(seed):
    """lambda=0 gives the TD error; lambda=1 gives the bootstrapped Monte-Carlo return minus V."""
    rng = np.random.default_rng(seed)
    steps, gamma = 6, 0.9
    rewards = rng.normal(size=steps).astype(np.float32)
    values = rng.normal(size=steps + 1).astype(np.float32)
    dones = random_dones(rng, (steps,))
    td = [rewards[t] + gamma * values[t + 1] * (1 - dones[t]) - values[t] for t in range(steps)]
    assert_close(utils.compute_gae_advantages(rewards, values, dones, gamma, 0.0), td)

    mc = np.zeros(steps)
    for t in range(steps):
        total, k = 0.0, t
        while True:
            total += gamma ** (k - t) * rewards[k]
            if dones[k]:
                break
            if k == steps - 1:
                total += gamma ** (k - t + 1) * values[steps]
                break
            k += 1
        mc[t] = total
    assert_close(utils.compute_gae_advantages(rewards, values, dones, gamma, 1.0), mc - values[:steps])


def test_gae_accepts_no_dones():
    rewards = jnp.ones(4)
    values = jnp.zeros(5)
    got = utils.compute_gae_advantages(rewards, values, None, 0.5, 1.0)
    assert_close(got, ref_gae_1d(np.ones(4), np.zeros(5), np.zeros(4), 0.5, 1.0))


def test_gae_errors():
    rewards, dones = jnp.ones((2, 5)), jnp.zeros((2, 5))
    with pytest.raises(ValueError, match=r"values has shape \(2, 7\), expected \(2, 6\)"):
        utils.compute_gae_advantages(rewards, jnp.ones((2, 7)), dones, 0.9, 0.9)
    with pytest.raises(ValueError, match=r"values has shape \(3, 6\)"):
        utils.compute_gae_advantages(rewards, jnp.ones((3, 6)), dones, 0.9, 0.9)
    with pytest.raises(ValueError, match="last_value"):
        utils.compute_gae_advantages(rewards, jnp.ones((2, 6)), dones, 0.9, 0.9, last_value=jnp.ones(2))
    with pytest.raises(ValueError, match=r"last_value has shape \(3,\), expected \(2,\)"):
        utils.compute_gae_advantages(rewards, jnp.ones((2, 5)), dones, 0.9, 0.9, last_value=jnp.ones(3))
    with pytest.raises(ValueError, match=r"dones has shape \(5,\), expected \(2, 5\)"):
        utils.compute_gae_advantages(rewards, jnp.ones((2, 6)), jnp.zeros(5), 0.9, 0.9)
    with pytest.raises(ValueError, match=r"values has shape \(2, 3\)"):
        utils.compute_gae_returns(jnp.ones((2, 5)), jnp.ones((2, 3)))


# --------------------------------------------------------------------------- #
# Masked reductions and normalisation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_mean_and_sum(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    mask = rng.random((4, 6)) < 0.6
    mask[2] = False  # an empty row
    x_padded = np.where(mask, x, np.nan).astype(np.float32)  # padding must not leak
    x_padded[0, ~mask[0]] = np.inf

    assert_close(utils.masked_mean(x_padded, mask), ref_masked_mean(x, mask))
    assert_close(utils.masked_sum(x_padded, mask), np.sum(np.where(mask, x, 0.0)))
    row_means = [ref_masked_mean(x[b], mask[b]) for b in range(4)]
    assert_close(utils.masked_mean(x_padded, mask, axis=1), row_means)
    assert float(utils.masked_mean(x_padded, mask, axis=1)[2]) == 0.0
    assert_close(
        utils.masked_sum(x, mask, axis=0), [sum(x[b, j] for b in range(4) if mask[b, j]) for j in range(6)]
    )
    assert_close(utils.masked_mean(x), np.mean(x.astype(np.float64)))
    assert float(utils.masked_mean(x, np.zeros_like(mask))) == 0.0
    # A (B, 1) mask broadcasts over the last axis.
    assert_close(utils.masked_mean(x, mask[:, :1]), ref_masked_mean(x, np.broadcast_to(mask[:, :1], x.shape)))
    with pytest.raises(
        ValueError, match=r"mask has shape \(3,\), expected a shape broadcastable to \(4, 6\)"
    ):
        utils.masked_mean(x, np.ones(3))


def ref_normalize(x, mask, eps):
    flat = np.asarray(x, np.float64).ravel()
    valid = np.asarray(mask).ravel()
    picked = [v for v, m in zip(flat, valid, strict=True) if m]
    mean = sum(picked) / len(picked)
    std = math.sqrt(sum((v - mean) ** 2 for v in picked) / len(picked))
    out = [(v - mean) / (std + eps) if m else 0.0 for v, m in zip(flat, valid, strict=True)]
    return np.array(out).reshape(np.shape(x))


@pytest.mark.parametrize("seed", SEEDS)
def test_normalize_advantages(seed):
    rng = np.random.default_rng(seed)
    x = (3.0 + 2.0 * rng.normal(size=(4, 6))).astype(np.float32)
    mask = rng.random((4, 6)) < 0.7
    got = utils.normalize_advantages(x, mask)
    assert_close(got, ref_normalize(x, mask, 1e-8))
    assert np.all(np.asarray(got)[~mask] == 0.0)
    assert_close(utils.normalize_advantages(x), ref_normalize(x, np.ones_like(mask), 1e-8))
    assert_close(utils.normalize_advantages(x, eps=0.5), ref_normalize(x, np.ones_like(mask), 0.5))


@pytest.mark.parametrize("value", [0.1, 2.3, 123.456])
def test_normalize_advantages_constant_input_is_exactly_zero(value):
    x = np.full((7,), value, np.float32)
    assert np.all(np.asarray(utils.normalize_advantages(x)) == 0.0)
    mask = np.array([1, 1, 1, 0, 1, 1, 0], bool)
    x_masked = np.where(mask, x, 5.0).astype(np.float32)  # only the valid entries are constant
    assert np.all(np.asarray(utils.normalize_advantages(x_masked, mask)) == 0.0)
    assert np.all(np.asarray(utils.normalize_advantages(x, np.zeros(7, bool))) == 0.0)


# --------------------------------------------------------------------------- #
# Token-loss aggregation
# --------------------------------------------------------------------------- #


def ref_aggregate(per_token, mask, loss_type):
    batch, length = per_token.shape
    if loss_type == "grpo":
        seq_means = []
        for b in range(batch):
            picked = [per_token[b, t] for t in range(length) if mask[b, t]]
            seq_means.append(sum(picked) / len(picked) if picked else 0.0)
        return sum(seq_means) / batch
    total = sum(per_token[b, t] for b in range(batch) for t in range(length) if mask[b, t])
    if loss_type in ("bnpo", "dapo"):  # equal within one batch; they differ under accumulation
        return total / max(int(mask.sum()), 1)
    return total / (batch * length)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss_type", utils.GRPO_LOSS_TYPES)
def test_aggregate_token_loss(seed, loss_type):
    rng = np.random.default_rng(seed)
    per_token = rng.normal(size=(4, 6))
    lengths = rng.integers(1, 7, size=4)
    lengths[1] = 0  # a sequence with no valid token
    mask = np.arange(6)[None, :] < lengths[:, None]
    padded = np.where(mask, per_token, np.nan).astype(np.float32)
    got = utils.aggregate_token_loss(padded, mask, loss_type)
    assert np.isfinite(float(got))
    assert_close(got, ref_aggregate(per_token, mask, loss_type))
    assert_close(
        utils.aggregate_token_loss(per_token.astype(np.float32), None, loss_type),
        ref_aggregate(per_token, np.ones_like(mask), loss_type),
    )


def test_aggregate_token_loss_all_masked_is_zero_not_nan():
    per_token = jnp.full((4, 6), jnp.nan)
    for loss_type in utils.GRPO_LOSS_TYPES:
        assert float(utils.aggregate_token_loss(per_token, jnp.zeros((4, 6)), loss_type)) == 0.0


def test_aggregate_token_loss_errors():
    with pytest.raises(
        ValueError, match=r"loss_type must be one of \['grpo', 'bnpo', 'dr_grpo', 'dapo'\], got 'mean'"
    ):
        utils.aggregate_token_loss(jnp.ones((2, 3)), None, "mean")
    with pytest.raises(ValueError, match=r"per_token has shape \(6,\), expected \(B, T\)"):
        utils.aggregate_token_loss(jnp.ones(6), None, "grpo")


# --------------------------------------------------------------------------- #
# Entropy and KL
# --------------------------------------------------------------------------- #


def ref_entropy(logits):
    logp = ref_log_softmax(logits)
    out = np.zeros(logits.shape[:-1])
    for idx in np.ndindex(*logits.shape[:-1]):
        out[idx] = -sum(math.exp(lp) * lp for lp in logp[idx] if np.isfinite(lp))
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_policy_entropy(seed):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=(4, 6, 5))).astype(np.float32)
    mask = rng.random((4, 6)) < 0.6
    mask[0, 0] = True
    assert_close(utils.compute_policy_entropy(logits), np.mean(ref_entropy(logits)))
    assert_close(utils.compute_policy_entropy(logits, mask), ref_masked_mean(ref_entropy(logits), mask))
    uniform = np.zeros((3, 8), np.float32)
    assert_close(utils.compute_policy_entropy(uniform), math.log(8))


def test_policy_entropy_with_masked_actions_has_finite_gradient():
    logits = jnp.array([[0.0, 1.0, -jnp.inf], [2.0, -jnp.inf, -jnp.inf]])
    value = utils.compute_policy_entropy(logits)
    grad = jax.grad(utils.compute_policy_entropy)(logits)
    assert_close(value, np.mean(ref_entropy(np.asarray(logits))))
    assert np.all(np.isfinite(np.asarray(grad)))


def ref_kl(logp, ref_logp, estimator):
    out = np.zeros(np.shape(logp))
    for idx in np.ndindex(*np.shape(logp)):
        d = float(ref_logp[idx]) - float(logp[idx])
        if estimator == "k1":
            out[idx] = -d
        elif estimator == "k2":
            out[idx] = 0.5 * d * d
        else:
            out[idx] = math.exp(d) - d - 1.0
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", utils.KL_ESTIMATORS)
def test_kl_estimators(seed, estimator):
    rng = np.random.default_rng(seed)
    logp = -rng.random((4, 6)).astype(np.float32) * 3.0
    ref_logp = (logp + rng.normal(size=(4, 6))).astype(np.float32)
    mask = rng.random((4, 6)) < 0.6
    mask[0, 0] = True
    expected = ref_kl(logp, ref_logp, estimator)
    assert_close(utils.compute_kl_divergence(logp, ref_logp, estimator), np.mean(expected))
    assert_close(
        utils.compute_kl_divergence(logp, ref_logp, estimator, mask), ref_masked_mean(expected, mask)
    )
    per_element = utils.compute_kl_divergence(logp, ref_logp, estimator, mask, reduce=False)
    assert per_element.shape == (4, 6)
    assert_close(per_element, np.where(mask, expected, 0.0))
    assert_close(utils.compute_kl_divergence(logp, ref_logp, estimator, reduce=False), expected)


def test_kl_estimators_are_unbiased_for_k1_k3():
    """Monte-Carlo check of the direction convention: E_{a~pi}[k] ~ KL(pi || ref)."""
    rng = np.random.default_rng(0)
    pi = np.array([0.5, 0.3, 0.15, 0.05])
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    exact = float(np.sum(pi * np.log(pi / ref)))
    actions = rng.choice(4, size=200_000, p=pi)
    logp = np.log(pi[actions]).astype(np.float32)
    ref_logp = np.log(ref[actions]).astype(np.float32)
    for estimator in ("k1", "k3"):
        assert abs(float(utils.compute_kl_divergence(logp, ref_logp, estimator)) - exact) < 5e-3
    # k2 is biased but close for nearby distributions, and never below 0.
    assert float(utils.compute_kl_divergence(logp, ref_logp, "k2")) > 0.0


@pytest.mark.parametrize("estimator", utils.KL_ESTIMATORS)
@pytest.mark.parametrize("d", [50.0, -50.0, 1000.0, -1000.0])
def test_kl_extreme_log_ratios_are_finite(estimator, d):
    logp = jnp.array([-1.0, -2.0, -0.5])
    ref_logp = logp + jnp.array([d, 0.1, -0.1])

    def loss(lp):
        return utils.compute_kl_divergence(lp, ref_logp, estimator)

    value, grad = jax.value_and_grad(loss)(logp)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(grad)))
    if estimator == "k3":
        assert float(value) >= 0.0
        if d > 0:  # clamped at MAX_LOG_RATIO: saturates at k3(20)
            expected = (math.exp(20.0) - 21.0 + ref_kl(logp[1:], ref_logp[1:], "k3").sum()) / 3
            assert_close(value, expected)
        else:  # no lower clamp: exact
            assert_close(value, ref_kl(np.asarray(logp), np.asarray(ref_logp), "k3").mean(), rtol=1e-5)


def test_kl_errors():
    with pytest.raises(ValueError, match=r"estimator must be one of \['k1', 'k2', 'k3'\], got 'k4'"):
        utils.compute_kl_divergence(jnp.zeros(3), jnp.zeros(3), "k4")
    with pytest.raises(ValueError, match=r"ref_logp has shape \(4,\), expected \(3,\)"):
        utils.compute_kl_divergence(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match=r"ref_logits has shape \(2, 4\), expected \(2, 5\)"):
        categorical_kl(jnp.zeros((2, 5)), jnp.zeros((2, 4)))


@pytest.mark.parametrize("seed", SEEDS)
def test_kl_from_logits(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(4, 6, 5)).astype(np.float32)
    ref_logits = rng.normal(size=(4, 6, 5)).astype(np.float32)
    logp, ref_logp = ref_log_softmax(logits), ref_log_softmax(ref_logits)
    expected = np.zeros((4, 6))
    for idx in np.ndindex(4, 6):
        expected[idx] = sum(math.exp(a) * (a - b) for a, b in zip(logp[idx], ref_logp[idx], strict=True))
    mask = rng.random((4, 6)) < 0.5
    mask[0, 0] = True
    assert_close(categorical_kl(logits, ref_logits), expected)
    assert_close(utils.masked_mean(categorical_kl(logits, ref_logits)), expected.mean())
    assert_close(utils.masked_mean(categorical_kl(logits, ref_logits), mask), ref_masked_mean(expected, mask))
    assert_close(categorical_kl(logits, logits), 0.0)


def test_kl_from_logits_with_shared_masked_actions():
    logits = jnp.array([0.3, -jnp.inf, 1.0])
    ref_logits = jnp.array([0.0, -jnp.inf, 0.0])
    value, grad = jax.value_and_grad(categorical_kl)(logits, ref_logits)
    p = np.exp(ref_log_softmax(np.array([0.3, 1.0])))
    q = np.array([0.5, 0.5])
    assert_close(value, np.sum(p * np.log(p / q)))
    assert np.all(np.isfinite(np.asarray(grad)))


# --------------------------------------------------------------------------- #
# Clipped surrogate
# --------------------------------------------------------------------------- #


def ref_surrogate(logp, old_logp, adv, eps, eps_high):
    out = np.zeros(np.shape(logp))
    for idx in np.ndindex(*np.shape(logp)):
        ratio = math.exp(float(logp[idx]) - float(old_logp[idx]))
        clipped = min(max(ratio, 1.0 - eps), 1.0 + eps_high)
        out[idx] = -min(ratio * adv[idx], clipped * adv[idx])
    return out


def ref_surrogate_grad(logp, old_logp, adv, eps, eps_high):
    """d loss_i / d logp_i: -ratio*A where the unclipped branch is the min, else 0."""
    out = np.zeros(np.shape(logp))
    for idx in np.ndindex(*np.shape(logp)):
        ratio = math.exp(float(logp[idx]) - float(old_logp[idx]))
        clipped = min(max(ratio, 1.0 - eps), 1.0 + eps_high)
        unclipped_is_min = ratio * adv[idx] <= clipped * adv[idx]
        inside = 1.0 - eps <= ratio <= 1.0 + eps_high
        out[idx] = -ratio * adv[idx] if (unclipped_is_min or inside) else 0.0
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clip_high", [None, 0.28])
def test_clipped_surrogate(seed, clip_high):
    rng = np.random.default_rng(seed)
    shape, eps = (4, 6), 0.2
    eps_high = eps if clip_high is None else clip_high
    old = -rng.random(shape).astype(np.float32) * 2.0
    logp = (old + 0.4 * rng.normal(size=shape)).astype(np.float32)
    adv = rng.normal(size=shape).astype(np.float32)
    mask = rng.random(shape) < 0.7
    mask[0, 0] = True

    expected = ref_surrogate(logp, old, adv, eps, eps_high)
    per_element = utils.clipped_surrogate_per_element(logp, old, adv, eps, clip_param_high=clip_high)
    assert_close(per_element, expected)

    loss, metrics = utils.compute_clipped_surrogate_loss(
        logp, old, adv, eps, mask=mask, clip_param_high=clip_high, return_metrics=True
    )
    # the seeds' `loss = compute_clipped_surrogate_loss(...)`: the scalar alone, the same value
    seed_form = utils.compute_clipped_surrogate_loss(logp, old, adv, eps, mask=mask, clip_param_high=clip_high)
    assert seed_form.shape == () and float(seed_form) == float(loss)
    separate = utils.clipped_surrogate_metrics(logp, old, eps, mask=mask, clip_param_high=clip_high)
    assert {k: float(v) for k, v in separate.items()} == {k: float(v) for k, v in metrics.items()}
    assert_close(loss, ref_masked_mean(expected, mask))
    ratio = np.exp(logp.astype(np.float64) - old)
    outside = (ratio < 1 - eps) | (ratio > 1 + eps_high)
    assert 0.0 < float(metrics["clip_fraction"]) < 1.0
    assert_close(metrics["clip_fraction"], ref_masked_mean(outside, mask))
    assert_close(metrics["approx_kl"], ref_masked_mean((ratio - 1) - np.log(ratio), mask))

    loss_all = utils.compute_clipped_surrogate_loss(logp, old, adv, eps, clip_param_high=clip_high)
    assert_close(loss_all, expected.mean())

    grad = jax.grad(lambda lp: jnp.sum(utils.clipped_surrogate_per_element(lp, old, adv, eps, clip_high)))(
        logp
    )
    assert_close(grad, ref_surrogate_grad(logp, old, adv, eps, eps_high))


def test_clipped_surrogate_sequence_advantages_broadcast_over_tokens():
    """(B,) advantages with (B, T) log-probs apply per row, even when B == T."""
    rng = np.random.default_rng(0)
    logp = -rng.random((4, 4)).astype(np.float32)
    old = (logp + 0.3 * rng.normal(size=(4, 4))).astype(np.float32)
    adv_seq = rng.normal(size=4).astype(np.float32)
    expected = ref_surrogate(logp, old, np.repeat(adv_seq[:, None], 4, axis=1), 0.2, 0.2)
    assert_close(utils.clipped_surrogate_per_element(logp, old, adv_seq, 0.2), expected)
    with pytest.raises(ValueError, match=r"advantages has shape \(3,\), expected \(4, 4\)"):
        utils.clipped_surrogate_per_element(logp, old, adv_seq[:3], 0.2)
    with pytest.raises(ValueError, match=r"old_log_probs has shape \(4, 3\), expected \(4, 4\)"):
        utils.compute_clipped_surrogate_loss(logp, old[:, :3], adv_seq, 0.2)


@pytest.mark.parametrize("d", [50.0, -50.0, 1000.0, -1000.0])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clipped_surrogate_extreme_log_ratios_are_finite(d, sign):
    old = jnp.array([-1.0, -2.0, -3.0])
    adv = sign * jnp.array([1.0, 0.5, 2.0])

    def loss(lp):
        value, metrics = utils.compute_clipped_surrogate_loss(lp, old, adv, 0.2, return_metrics=True)
        return value, metrics

    (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(old + jnp.array([d, 0.0, 0.1]))
    assert np.isfinite(float(value))
    assert np.isfinite(float(metrics["approx_kl"]))
    assert np.all(np.isfinite(np.asarray(grad)))


# --------------------------------------------------------------------------- #
# Group advantages
# --------------------------------------------------------------------------- #


def ref_group_advantages(rewards, group_size, scale_rewards, eps):
    rewards = np.asarray(rewards, np.float64)
    n = len(rewards)
    batch_mean = sum(rewards) / n
    batch_std = math.sqrt(sum((r - batch_mean) ** 2 for r in rewards) / n)
    adv = np.zeros(n)
    zero_std, group_stds = 0, []
    for start in range(0, n, group_size):
        group = rewards[start : start + group_size]
        mean = sum(group) / group_size
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / group_size)
        equal = all(r == group[0] for r in group)
        zero_std += equal
        group_stds.append(0.0 if equal else std)
        for i, r in enumerate(group):
            if equal:
                a = 0.0
            elif scale_rewards == "group":
                a = (r - mean) / (std + eps)
            elif scale_rewards == "batch":
                a = (r - mean) / (batch_std + eps)
            else:
                a = r - mean
            adv[start + i] = a
    metrics = {
        "frac_reward_zero_std": zero_std / (n // group_size),
        "group_advantage_std": np.std(adv),
        "reward_std": np.mean(group_stds),
    }
    return adv, metrics


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scale_rewards", utils.SCALE_REWARDS)
@pytest.mark.parametrize("group_size", [1, 3, 6])
def test_group_advantages(seed, scale_rewards, group_size):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=4 * group_size).astype(np.float32)
    rewards[:group_size] = 0.7  # one degenerate group
    if group_size > 1:
        rewards[group_size : 2 * group_size] = rng.integers(0, 2, size=group_size)  # binary rewards
    adv, metrics = utils.compute_group_advantages(rewards, group_size, scale_rewards)
    ref_adv, ref_metrics = ref_group_advantages(rewards, group_size, scale_rewards, 1e-4)
    assert adv.shape == rewards.shape
    assert_close(adv, ref_adv)
    assert np.all(np.asarray(adv)[:group_size] == 0.0)
    for key, value in ref_metrics.items():
        assert_close(metrics[key], value)


@pytest.mark.parametrize("scale_rewards", utils.SCALE_REWARDS)
@pytest.mark.parametrize("group_size", [3, 6, 8])
def test_group_advantages_all_equal_is_exactly_zero(scale_rewards, group_size):
    # These constants make float32 ``r - mean(r)`` non-zero round-off (e.g. -7.6e-6 for 123.456
    # in a group of 3), which a std-based division would blow up into a spurious advantage.
    noise = np.random.default_rng(group_size).normal(size=group_size)
    for value in [0.1, 1 / 3, 0.7, 2.3, 123.456, -5.0, 0.0]:
        rewards = np.concatenate(
            [np.full(group_size, value), np.arange(group_size) ** 2, np.full(group_size, -value), noise]
        ).astype(np.float32)
        adv, metrics = utils.compute_group_advantages(rewards, group_size, scale_rewards)
        adv = np.asarray(adv)
        assert np.all(adv[:group_size] == 0.0), value
        assert np.all(adv[2 * group_size : 3 * group_size] == 0.0), value
        assert np.all(adv[group_size : 2 * group_size] != 0.0)
        assert float(metrics["frac_reward_zero_std"]) == 0.5


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32), min_size=4, max_size=4
    ),
    scale_rewards=st.sampled_from(utils.SCALE_REWARDS),
)
def test_group_advantages_degenerate_groups_property(values, scale_rewards):
    rewards = np.repeat(np.array(values, np.float32), 6)  # 4 groups of 6 equal rewards
    adv, metrics = utils.compute_group_advantages(rewards, 6, scale_rewards)
    assert np.all(np.asarray(adv) == 0.0)
    assert float(metrics["frac_reward_zero_std"]) == 1.0
    assert float(metrics["group_advantage_std"]) == 0.0


def test_group_advantages_errors():
    with pytest.raises(ValueError, match=r"rewards has shape \(10,\).*not a multiple of group_size=4"):
        utils.compute_group_advantages(jnp.ones(10), 4)
    with pytest.raises(ValueError, match=r"rewards has shape \(2, 4\), expected \(B,\)"):
        utils.compute_group_advantages(jnp.ones((2, 4)), 4)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        utils.compute_group_advantages(jnp.ones(4), 0)
    with pytest.raises(ValueError, match="group_size must be a Python int"):
        utils.compute_group_advantages(jnp.ones(4), 2.0)
    with pytest.raises(ValueError, match=r"scale_rewards must be one of \['group', 'batch', 'none'\]"):
        utils.compute_group_advantages(jnp.ones(4), 2, "std")


# --------------------------------------------------------------------------- #
# DPO
# --------------------------------------------------------------------------- #


def ref_dpo(pc, pr, rc, rr, beta, ls, loss_type):
    losses = []
    for i in range(len(pc)):
        logits = (pc[i] - pr[i]) - (rc[i] - rr[i])
        z = beta * logits
        if loss_type == "sigmoid":
            loss = -(1 - ls) * ref_log_sigmoid(z) - ls * ref_log_sigmoid(-z)
        elif loss_type == "hinge":
            loss = max(0.0, 1.0 - z)
        elif loss_type == "ipo":
            loss = (logits - 1.0 / (2.0 * beta)) ** 2
        else:
            loss = ((1 - ls) * -ref_log_sigmoid(z) + ls * ref_log_sigmoid(-z)) / (1 - 2 * ls)
        losses.append(loss)
    chosen = beta * (np.asarray(pc, np.float64) - rc)
    rejected = beta * (np.asarray(pr, np.float64) - rr)
    return np.mean(losses), chosen, rejected


def dpo_inputs(seed, batch=8):
    rng = np.random.default_rng(seed)
    pc, pr, rc, rr = (-rng.uniform(5.0, 30.0, size=batch).astype(np.float32) for _ in range(4))
    return pc, pr, rc, rr


def assert_dpo_metrics(metrics, chosen, rejected):
    assert_close(metrics["chosen_reward"], np.mean(chosen))
    assert_close(metrics["rejected_reward"], np.mean(rejected))
    assert_close(metrics["reward_margin"], np.mean(chosen - rejected))
    assert_close(metrics["reward_accuracy"], np.mean([c > r for c, r in zip(chosen, rejected, strict=True)]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "loss_type, ls",
    [("sigmoid", 0.0), ("sigmoid", 0.1), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.0), ("robust", 0.2)],
)
def test_dpo_loss(seed, loss_type, ls):
    pc, pr, rc, rr = dpo_inputs(seed)
    beta = 0.3
    loss, metrics = utils.compute_dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=ls, loss_type=loss_type)
    ref_loss, chosen, rejected = ref_dpo(pc, pr, rc, rr, beta, ls, loss_type)
    assert loss.shape == ()
    assert_close(loss, ref_loss)
    assert_dpo_metrics(metrics, chosen, rejected)
    assert 0.0 < float(metrics["reward_accuracy"]) < 1.0


def test_dpo_sigmoid_gradient_prefers_chosen():
    pc, pr, rc, rr = dpo_inputs(0)
    grads = jax.grad(lambda c, r: utils.compute_dpo_loss(c, r, rc, rr)[0], argnums=(0, 1))(pc, pr)
    assert np.all(np.asarray(grads[0]) < 0) and np.all(np.asarray(grads[1]) > 0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ls", [0.0, 0.15])
def test_simpo_loss(seed, ls):
    pc, pr, _, _ = dpo_inputs(seed)
    rng = np.random.default_rng(seed + 100)
    len_c = rng.integers(1, 20, size=8).astype(np.float32)
    len_r = rng.integers(1, 20, size=8).astype(np.float32)
    beta, gamma = 2.0, 0.5
    loss, metrics = utils.compute_dpo_loss(
        pc,
        pr,
        beta=beta,
        label_smoothing=ls,
        reference_free=True,
        simpo_gamma=gamma,
        chosen_lengths=len_c,
        rejected_lengths=len_r,
    )
    losses = []
    for i in range(8):
        z = beta * (pc[i] / len_c[i] - pr[i] / len_r[i]) - gamma
        losses.append(-(1 - ls) * ref_log_sigmoid(z) - ls * ref_log_sigmoid(-z))
    assert_close(loss, np.mean(losses))
    assert_dpo_metrics(metrics, beta * pc / len_c.astype(np.float64), beta * pr / len_r.astype(np.float64))
    # Reference log-probs are not used by SimPO.
    loss_with_ref, _ = utils.compute_dpo_loss(
        pc,
        pr,
        pc,
        pr,
        beta=beta,
        label_smoothing=ls,
        reference_free=True,
        simpo_gamma=gamma,
        chosen_lengths=len_c,
        rejected_lengths=len_r,
    )
    assert_close(loss_with_ref, loss)


def test_dpo_extreme_inputs_are_finite():
    pc = jnp.array([-1.0, -1000.0])
    pr = jnp.array([-1000.0, -1.0])
    ref = jnp.array([-5.0, -5.0])
    for loss_type in utils.DPO_LOSS_TYPES:
        value, grad = jax.value_and_grad(
            lambda c, t=loss_type: utils.compute_dpo_loss(c, pr, ref, ref, loss_type=t)[0]
        )(pc)
        assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad))), loss_type


def test_dpo_errors():
    x = jnp.zeros(4)
    with pytest.raises(
        ValueError, match=r"loss_type must be one of \['sigmoid', 'hinge', 'ipo', 'robust'\], got 'kto'"
    ):
        utils.compute_dpo_loss(x, x, x, x, loss_type="kto")
    with pytest.raises(ValueError, match="ref_chosen_logps and ref_rejected_logps"):
        utils.compute_dpo_loss(x, x)
    with pytest.raises(ValueError, match=r"chosen_lengths and rejected_lengths, each of shape \(4,\)"):
        utils.compute_dpo_loss(x, x, reference_free=True)
    with pytest.raises(ValueError, match="SimPO"):
        utils.compute_dpo_loss(
            x, x, reference_free=True, loss_type="hinge", chosen_lengths=x, rejected_lengths=x
        )
    with pytest.raises(ValueError, match=r"policy_rejected_logps has shape \(3,\), expected \(4,\)"):
        utils.compute_dpo_loss(x, jnp.zeros(3), x, x)
    with pytest.raises(ValueError, match=r"ref_rejected_logps has shape \(4, 1\), expected \(4,\)"):
        utils.compute_dpo_loss(x, x, x, jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"policy_chosen_logps has shape \(4, 2\), expected \(B,\)"):
        utils.compute_dpo_loss(jnp.zeros((4, 2)), jnp.zeros((4, 2)), x, x)
    with pytest.raises(ValueError, match="label_smoothing < 0.5"):
        utils.compute_dpo_loss(x, x, x, x, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing is not defined for loss_type='ipo'"):
        utils.compute_dpo_loss(x, x, x, x, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        utils.compute_dpo_loss(x, x, x, x, label_smoothing=-0.1)


# --------------------------------------------------------------------------- #
# jit
# --------------------------------------------------------------------------- #


def _jit_cases():
    rng = np.random.default_rng(7)
    r = rng.normal(size=(4, 6)).astype(np.float32)
    v = rng.normal(size=(4, 7)).astype(np.float32)
    d = random_dones(rng, (4, 6))
    m = rng.random((4, 6)) < 0.7
    lp = -rng.random((4, 6)).astype(np.float32)
    old = (lp + 0.3 * rng.normal(size=(4, 6))).astype(np.float32)
    logits = rng.normal(size=(4, 6, 5)).astype(np.float32)
    seq = -rng.uniform(1, 10, size=(4, 8)).astype(np.float32)
    lengths = np.full(8, 3.0, np.float32)
    return {
        "returns": (lambda r, d, g: utils.compute_discounted_returns(r, g, d), (r, d, 0.9)),
        "gae": (lambda r, v, d: utils.compute_gae_advantages(r, v, d, 0.99, 0.95), (r, v, d)),
        "gae_last_value": (
            lambda r, v, d, lv: utils.compute_gae_advantages(r, v, d, 0.99, 0.95, last_value=lv),
            (r, v[:, :6], d, v[:, 6]),
        ),
        "normalize": (utils.normalize_advantages, (r, m)),
        "masked_mean": (lambda x, m: utils.masked_mean(x, m, axis=1), (r, m)),
        "masked_sum": (utils.masked_sum, (r, m)),
        "aggregate": (
            lambda x, m: [utils.aggregate_token_loss(x, m, t) for t in utils.GRPO_LOSS_TYPES],
            (r, m),
        ),
        "entropy": (utils.compute_policy_entropy, (logits, m)),
        "kl": (
            lambda a, b, m: [utils.compute_kl_divergence(a, b, e, m) for e in utils.KL_ESTIMATORS],
            (lp, old, m),
        ),
        "kl_logits": (categorical_kl, (logits, logits[::-1])),
        "surrogate": (
            lambda a, b, adv, m: utils.compute_clipped_surrogate_loss(a, b, adv, 0.2, m, 0.3, return_metrics=True),
            (lp, old, r, m),
        ),
        "group": (
            lambda x: [utils.compute_group_advantages(x, 6, scale) for scale in utils.SCALE_REWARDS],
            (r.reshape(-1),),
        ),
        "dpo": (
            lambda a, b, c, e: [
                utils.compute_dpo_loss(
                    a, b, c, e, loss_type=t, label_smoothing=0.1 * (t in ("sigmoid", "robust"))
                )
                for t in utils.DPO_LOSS_TYPES
            ],
            tuple(seq),
        ),
        "simpo": (
            lambda a, b, lc, lr: utils.compute_dpo_loss(
                a, b, reference_free=True, chosen_lengths=lc, rejected_lengths=lr
            ),
            (seq[0], seq[1], lengths, lengths + 1),
        ),
    }


def test_jit_matches_eager():
    """Every function under one ``jax.jit`` (one compilation keeps the test fast) equals its eager result."""
    cases = _jit_cases()
    eager = {name: fn(*args) for name, (fn, args) in cases.items()}
    jitted = jax.jit(lambda all_args: {name: fn(*all_args[name]) for name, (fn, _) in cases.items()})(
        {name: args for name, (_, args) in cases.items()}
    )
    assert set(jitted) == set(cases)
    for name in cases:
        leaves_e, tree_e = jax.tree_util.tree_flatten(eager[name])
        leaves_j, tree_j = jax.tree_util.tree_flatten(jitted[name])
        assert tree_e == tree_j, name
        for a, b in zip(leaves_e, leaves_j, strict=True):
            assert_close(b, a, rtol=1e-6, atol=1e-6)
