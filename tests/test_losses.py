"""Tests of artifex_rl.rl.losses beyond tests/test_rl_utils.py: the LossTerm forms, `dapo`,
the one-trajectory returns, the per-element losses and the closed-form KLs.

References are plain numpy (float64, explicit loops) sharing no code with the implementation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artifex_rl.core.loss_terms import LossTerm, terms_value
from artifex_rl.rl import losses as L

SEEDS = [0, 1, 2]


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol
    )


def ragged_batch(rng, batch=8, length=6):
    """A per-token loss with NaN padding and a mask of uneven lengths (one row empty)."""
    per_token = rng.normal(size=(batch, length))
    lengths = rng.integers(1, length + 1, size=batch)
    lengths[2] = 0
    mask = np.arange(length)[None, :] < lengths[:, None]
    padded = np.where(mask, per_token, np.nan).astype(np.float32)
    return per_token, mask, padded


def whole_batch_reference(per_token, mask, loss_type):
    """The loss of the whole batch, from the definitions (loops over valid tokens)."""
    batch, length = per_token.shape
    valid = [[per_token[b, t] for t in range(length) if mask[b, t]] for b in range(batch)]
    if loss_type == "grpo":
        return sum(sum(v) / len(v) if v else 0.0 for v in valid) / batch
    total = sum(sum(v) for v in valid)
    if loss_type == "dapo":
        return total / max(sum(len(v) for v in valid), 1)
    if loss_type == "dr_grpo":
        return total / (batch * length)
    raise AssertionError(loss_type)


def accumulate(terms):
    """What the trainer does over micro-batches: sum totals and counts, divide once."""
    total = sum(float(t.total) for t in terms)
    count = sum(float(t.count) for t in terms)
    return total / max(count, 1.0)


# --------------------------------------------------------------------------- #
# Aggregation: dapo and the LossTerm forms
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", SEEDS)
def test_dapo_is_the_token_mean_of_the_whole_batch(seed):
    per_token, mask, padded = ragged_batch(np.random.default_rng(seed))
    term = L.token_loss_term(padded, mask, "dapo")
    assert isinstance(term, LossTerm)
    assert_close(term.total, np.sum(np.where(mask, per_token, 0.0)))
    assert float(term.count) == mask.sum()
    assert_close(L.aggregate_token_loss(padded, mask, "dapo"), whole_batch_reference(per_token, mask, "dapo"))
    assert_close(terms_value((term,)), whole_batch_reference(per_token, mask, "dapo"))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_loss_terms_summed_over_uneven_micro_batches_equal_the_whole_batch(seed, loss_type):
    rng = np.random.default_rng(seed)
    per_token, mask, padded = ragged_batch(rng)
    # Micro-batches of different sizes and very different valid-token counts.
    splits = [(0, 1), (1, 4), (4, 8)]
    terms = [L.token_loss_term(padded[a:b], mask[a:b], loss_type) for a, b in splits]
    expected = whole_batch_reference(per_token, mask, loss_type)
    assert_close(accumulate(terms), expected)
    # The mean of per-micro-batch means is not the whole-batch value here (dapo needs the totals).
    if loss_type == "dapo":
        means = [float(L.aggregate_token_loss(padded[a:b], mask[a:b], loss_type)) for a, b in splits]
        assert abs(np.mean(means) - expected) > 1e-3


def test_bnpo_term_is_the_micro_batch_token_mean():
    rng = np.random.default_rng(3)
    per_token, mask, padded = ragged_batch(rng)
    splits = [(0, 3), (3, 8)]
    terms = [L.token_loss_term(padded[a:b], mask[a:b], "bnpo") for a, b in splits]
    local_means = [
        np.sum(np.where(mask[a:b], per_token[a:b], 0.0)) / max(mask[a:b].sum(), 1) for a, b in splits
    ]
    assert all(float(t.count) == 1.0 for t in terms)
    assert_close(accumulate(terms), np.mean(local_means))


def test_loss_terms_all_masked_are_zero_not_nan():
    per_token = jnp.full((3, 4), jnp.nan)
    for loss_type in L.GRPO_LOSS_TYPES:
        term = L.token_loss_term(per_token, jnp.zeros((3, 4)), loss_type)
        assert float(term.total) == 0.0
        assert float(terms_value((term,))) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_dapo_gradient_weighs_every_token_equally(seed):
    """d loss / d l_bt = m_bt / (number of valid tokens in the whole batch)."""
    _, mask, _ = ragged_batch(np.random.default_rng(seed))
    x = jnp.asarray(np.random.default_rng(seed + 10).normal(size=mask.shape), jnp.float32)
    grads = [
        jax.grad(lambda v, a=a, b=b: L.token_loss_term(v[a:b], mask[a:b], "dapo").total / mask.sum())(x)
        for a, b in [(0, 5), (5, 8)]
    ]
    assert_close(sum(grads), mask / mask.sum())


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_mean_term_over_micro_batches(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(10, 3))
    mask = rng.random((10, 3)) < 0.4
    mask[0] = True
    terms = [L.masked_mean_term(x[a:b].astype(np.float32), mask[a:b]) for a, b in [(0, 2), (2, 9), (9, 10)]]
    picked = [x[idx] for idx in np.ndindex(10, 3) if mask[idx]]
    assert_close(accumulate(terms), sum(picked) / len(picked))
    assert float(L.masked_mean_term(x.astype(np.float32)).count) == 30.0


def test_token_loss_term_errors():
    with pytest.raises(ValueError, match=r"loss_type must be one of \['grpo', 'bnpo', 'dr_grpo', 'dapo'\]"):
        L.token_loss_term(jnp.ones((2, 3)), None, "token")
    with pytest.raises(ValueError, match=r"per_token has shape \(6,\), expected \(B, T\)"):
        L.token_loss_term(jnp.ones(6), None)


# --------------------------------------------------------------------------- #
# Returns: one trajectory (rlax style)
# --------------------------------------------------------------------------- #


def ref_returns(rewards, discounts, bootstrap):
    out, g = np.zeros(len(rewards)), bootstrap
    for t in reversed(range(len(rewards))):
        g = rewards[t] + discounts[t] * g
        out[t] = g
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_discounted_returns_one_trajectory(seed):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=7)
    dones = rng.random(7) < 0.3
    discounts = 0.9 * (1.0 - dones)
    got = L.discounted_returns(rewards.astype(np.float32), discounts.astype(np.float32), 2.5)
    assert_close(got, ref_returns(rewards, discounts, 2.5))
    # The batched form with no bootstrap is the same recursion with G_T = 0.
    assert_close(L.compute_discounted_returns(rewards, 0.9, dones), ref_returns(rewards, discounts, 0.0))


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_one_trajectory_matches_the_sum_of_td_errors(seed):
    rng = np.random.default_rng(seed)
    steps, lam = 6, 0.8
    rewards, values = rng.normal(size=steps), rng.normal(size=steps + 1)
    discounts = 0.95 * (rng.random(steps) > 0.3)
    deltas = rewards + discounts * values[1:] - values[:-1]
    expected = np.zeros(steps)
    for t in range(steps):
        weight = 1.0
        for k in range(t, steps):
            expected[t] += weight * deltas[k]
            weight *= lam * discounts[k]
    got = L.generalized_advantage_estimation(
        rewards.astype(np.float32), discounts.astype(np.float32), values.astype(np.float32), lam
    )
    assert_close(got, expected)


def test_returns_ignore_nan_after_an_episode_end():
    rewards = np.array([1.0, 2.0, np.nan], np.float32)
    got = L.discounted_returns(rewards, np.array([0.9, 0.0, 0.9], np.float32))
    assert_close(got[:2], [1.0 + 0.9 * 2.0, 2.0])


def test_one_trajectory_shape_errors():
    with pytest.raises(ValueError, match=r"r_t has shape \(2, 3\), expected \(T,\)"):
        L.discounted_returns(jnp.ones((2, 3)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"discount_t has shape \(4,\), expected \(3,\)"):
        L.discounted_returns(jnp.ones(3), jnp.ones(4))
    with pytest.raises(ValueError, match=r"values \(3,\), expected \(T,\) and \(T \+ 1,\)"):
        L.generalized_advantage_estimation(jnp.ones(3), jnp.ones(3), jnp.ones(3), 0.9)


# --------------------------------------------------------------------------- #
# Per-element policy-gradient and value losses
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", SEEDS)
def test_policy_gradient_per_element(seed):
    rng = np.random.default_rng(seed)
    logp = -rng.random((4, 5))
    adv = rng.normal(size=4)
    got = L.policy_gradient_per_element(logp.astype(np.float32), adv.astype(np.float32))
    assert_close(got, -adv[:, None] * logp)
    # The advantage is a constant of the loss: only d/d logp = -A.
    grad_adv = jax.grad(lambda a: jnp.sum(L.policy_gradient_per_element(jnp.asarray(logp), a)))(
        jnp.asarray(adv)
    )
    assert np.all(np.asarray(grad_adv) == 0.0)
    with pytest.raises(ValueError, match=r"advantages has shape \(5,\)"):
        L.policy_gradient_per_element(jnp.zeros((4, 5)), jnp.zeros(5))


@pytest.mark.parametrize("seed", SEEDS)
def test_value_loss_per_element(seed):
    rng = np.random.default_rng(seed)
    values, returns, old = (rng.normal(size=12) for _ in range(3))
    eps = 0.2
    expected_plain = [0.5 * (v - r) ** 2 for v, r in zip(values, returns, strict=True)]
    expected_clipped = []
    for v, r, o in zip(values, returns, old, strict=True):
        v_clip = o + min(max(v - o, -eps), eps)
        expected_clipped.append(0.5 * max((v - r) ** 2, (v_clip - r) ** 2))
    f32 = [x.astype(np.float32) for x in (values, returns, old)]
    assert_close(L.value_loss_per_element(f32[0], f32[1]), expected_plain)
    assert_close(L.value_loss_per_element(*f32, clip_param=eps), expected_clipped)
    with pytest.raises(ValueError, match="clip_param needs old_values"):
        L.value_loss_per_element(f32[0], f32[1], clip_param=eps)
    with pytest.raises(ValueError, match=r"returns has shape \(3,\), expected \(12,\)"):
        L.value_loss_per_element(f32[0], f32[1][:3])


# --------------------------------------------------------------------------- #
# KL: per-sample estimators and closed forms
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("estimator", L.KL_ESTIMATORS)
def test_kl_estimate_per_element(estimator):
    rng = np.random.default_rng(5)
    logp, ref = -rng.random(9), -rng.random(9)
    d = ref - logp
    expected = {"k1": -d, "k2": 0.5 * d**2, "k3": np.exp(d) - d - 1}[estimator]
    assert_close(L.kl_estimate(logp.astype(np.float32), ref.astype(np.float32), estimator), expected)


def test_kl_estimators_are_unbiased_for_a_known_kl():
    """k1 and k3 average to the exact KL between two categoricals over samples of the policy."""
    p, q = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.5, 0.3])
    exact = float(np.sum(p * np.log(p / q)))
    actions = jax.random.categorical(jax.random.key(0), jnp.log(jnp.asarray(p)), shape=(200_000,))
    logp, ref = jnp.log(jnp.asarray(p, jnp.float32))[actions], jnp.log(jnp.asarray(q, jnp.float32))[actions]
    for estimator in ("k1", "k3"):
        assert abs(float(jnp.mean(L.kl_estimate(logp, ref, estimator))) - exact) < 0.01, estimator
    assert_close(L.categorical_kl(jnp.log(jnp.asarray(p)), jnp.log(jnp.asarray(q))), exact)


@pytest.mark.parametrize("seed", SEEDS)
def test_gaussian_kl_closed_form(seed):
    rng = np.random.default_rng(seed)
    mean, ref_mean = rng.normal(size=(2, 4, 3))
    log_std, ref_log_std = 0.5 * rng.normal(size=(2, 4, 3))
    expected = np.zeros(4)
    for b in range(4):
        for d in range(3):
            s, s_ref = math.exp(log_std[b, d]), math.exp(ref_log_std[b, d])
            expected[b] += (
                math.log(s_ref / s) + (s**2 + (mean[b, d] - ref_mean[b, d]) ** 2) / (2 * s_ref**2) - 0.5
            )
    args = [x.astype(np.float32) for x in (mean, log_std, ref_mean, ref_log_std)]
    assert_close(L.gaussian_kl(*args), expected)
    assert_close(L.gaussian_kl(args[0], args[1], args[0], args[1]), np.zeros(4))


def test_gaussian_kl_matches_monte_carlo():
    mean, log_std, ref_mean, ref_log_std = 0.3, -0.2, -0.1, 0.4
    x = mean + math.exp(log_std) * np.random.default_rng(0).normal(size=400_000)

    def log_normal(x, m, ls):
        return -0.5 * ((x - m) / math.exp(ls)) ** 2 - ls - 0.5 * math.log(2 * math.pi)

    mc = np.mean(log_normal(x, mean, log_std) - log_normal(x, ref_mean, ref_log_std))
    got = L.gaussian_kl(
        jnp.array([mean]), jnp.array([log_std]), jnp.array([ref_mean]), jnp.array([ref_log_std])
    )
    assert abs(float(got) - mc) < 0.01


# --------------------------------------------------------------------------- #
# Group statistics and non-finite rewards
# --------------------------------------------------------------------------- #


def test_group_statistics_against_numpy():
    rng = np.random.default_rng(4)
    rewards = rng.normal(size=12).astype(np.float32)
    valid = rng.random(12) < 0.7
    valid[:4] = [True, False, False, False]  # one valid member: degenerate
    stats = L.group_statistics(rewards, 4, valid)
    for g in range(3):
        members = rewards[4 * g : 4 * g + 4][valid[4 * g : 4 * g + 4]].astype(np.float64)
        assert float(stats.count[g]) == len(members)
        if len(members):
            assert_close(stats.mean[g], members.mean())
            assert_close(stats.std[g], members.std())
        assert bool(stats.degenerate[g]) == (len(members) < 2 or members.min() == members.max())


@pytest.mark.parametrize("scale_rewards", L.SCALE_REWARDS)
def test_nonfinite_rewards_are_left_out_of_their_group(scale_rewards):
    rng = np.random.default_rng(6)
    rewards = rng.normal(size=12).astype(np.float32)
    bad = rewards.copy()
    bad[1], bad[6] = np.nan, np.inf
    adv, metrics = L.compute_group_advantages(bad, 4, scale_rewards)
    adv = np.asarray(adv)
    assert np.all(np.isfinite(adv))
    assert adv[1] == 0.0 and adv[6] == 0.0
    assert_close(metrics["nonfinite_reward_frac"], 2 / 12)
    # The rest equals the advantages computed with those two samples marked invalid.
    valid = np.isfinite(bad)
    ref_adv, _ = L.compute_group_advantages(np.where(valid, bad, 0.0), 4, scale_rewards, valid=valid)
    assert_close(adv, ref_adv)
    # ...and, for the "group" scale, equals a numpy computation over the finite members.
    if scale_rewards == "group":
        for g in range(3):
            sel = np.flatnonzero(valid[4 * g : 4 * g + 4]) + 4 * g
            r = bad[sel].astype(np.float64)
            assert_close(adv[sel], (r - r.mean()) / (r.std() + 1e-4))


# --------------------------------------------------------------------------- #
# Preference losses, per pair
# --------------------------------------------------------------------------- #


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("loss_type", L.DPO_LOSS_TYPES)
def test_dpo_loss_per_pair(loss_type):
    rng = np.random.default_rng(8)
    h = rng.normal(size=6) * 3
    beta, ls = 0.3, (0.1 if loss_type in ("sigmoid", "robust") else 0.0)
    z = beta * h
    expected = {
        "sigmoid": -(1 - ls) * log_sigmoid(z) - ls * log_sigmoid(-z),
        "hinge": np.maximum(0.0, 1 - z),
        "ipo": (h - 1 / (2 * beta)) ** 2,
        "robust": ((1 - ls) * -log_sigmoid(z) + ls * log_sigmoid(-z)) / (1 - 2 * ls),
    }[loss_type]
    assert_close(L.dpo_loss_per_pair(h.astype(np.float32), beta, loss_type, ls), expected)


def test_simpo_loss_per_pair_and_nll_term():
    rng = np.random.default_rng(9)
    pi_c, pi_r = -rng.uniform(1, 9, size=(2, 5))
    len_c, len_r = rng.integers(0, 6, size=(2, 5)).astype(np.float64)
    z = 2.0 * (pi_c / np.maximum(len_c, 1) - pi_r / np.maximum(len_r, 1)) - 0.4
    args = [x.astype(np.float32) for x in (pi_c, pi_r, len_c, len_r)]
    assert_close(L.simpo_loss_per_pair(*args, beta=2.0, gamma=0.4), -log_sigmoid(z))
    # RPO's NLL over uneven micro-batches is the NLL per chosen token of the whole batch.
    counts = len_c + 1
    terms = [L.chosen_nll_term(args[0][a:b], counts[a:b]) for a, b in [(0, 1), (1, 5)]]
    assert_close(accumulate(terms), -pi_c.sum() / counts.sum())
