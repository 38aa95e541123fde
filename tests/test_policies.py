"""Tests of artifex_rl.rl.policies against plain-numpy definitions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artifex_rl.rl import policies as P

RTOL = 1e-5
ATOL = 1e-5
SEEDS = [0, 1, 2]
LOG_2PI = math.log(2.0 * math.pi)


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol
    )


def ref_log_softmax_row(row):
    row = [float(v) for v in row]
    top = max(row)
    log_z = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_z for v in row]


def ref_entropy_row(row):
    return -sum(math.exp(lp) * lp for lp in ref_log_softmax_row(row) if lp != -math.inf)


# --------------------------------------------------------------------------- #
# Categorical
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", SEEDS)
def test_categorical_log_prob_and_entropy(seed):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=(4, 3, 5))).astype(np.float32)
    actions = rng.integers(0, 5, size=(4, 3))
    head = P.CategoricalPolicy()
    expected_logp = np.zeros((4, 3))
    expected_ent = np.zeros((4, 3))
    for idx in np.ndindex(4, 3):
        expected_logp[idx] = ref_log_softmax_row(logits[idx])[actions[idx]]
        expected_ent[idx] = ref_entropy_row(logits[idx])
    assert_close(head.log_prob(logits, actions), expected_logp)
    assert_close(head.entropy(logits), expected_ent)
    # Float actions are refused, even integer-valued ones: a float index would be truncated silently.
    with pytest.raises(TypeError, match=r"integer actions.*got actions of dtype float32"):
        head.log_prob(logits, actions.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(head.mode(logits)), logits.argmax(-1))


def test_categorical_masked_actions_entropy_value():
    logits = jnp.array([[0.0, 1.0, -jnp.inf], [2.0, -jnp.inf, -jnp.inf]])
    head = P.CategoricalPolicy()
    assert_close(head.entropy(logits), [ref_entropy_row([0.0, 1.0]), 0.0])
    assert_close(head.log_prob(logits, jnp.array([1, 0])), [ref_log_softmax_row([0.0, 1.0])[1], 0.0])


def test_categorical_masked_actions_entropy_gradient_is_finite_and_exact():
    logits = jnp.array([0.0, 1.0, -jnp.inf])
    grad = np.asarray(jax.grad(P.CategoricalPolicy().entropy)(logits), np.float64)
    # Analytic: dH/dz_i = -p_i (log p_i + H) on the valid actions, 0 on the masked one.
    p = np.exp(ref_log_softmax_row([0.0, 1.0]))
    h = -np.sum(p * np.log(p))
    np.testing.assert_allclose(grad, [*(-p * (np.log(p) + h)), 0.0], atol=1e-6)


def test_categorical_sample_frequencies():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (20_000, 4))
    samples = np.asarray(P.CategoricalPolicy().sample(logits, jax.random.key(0)))
    assert samples.shape == (20_000,)
    freq = np.bincount(samples, minlength=4) / samples.size
    np.testing.assert_allclose(freq, probs, atol=0.015)


# --------------------------------------------------------------------------- #
# Gaussian
# --------------------------------------------------------------------------- #


def ref_gaussian_log_prob(mean, log_std, action):
    total = 0.0
    for m, s, a in zip(mean, log_std, action, strict=True):
        sigma = math.exp(s)
        total += -((a - m) ** 2) / (2 * sigma**2) - math.log(sigma) - 0.5 * LOG_2PI
    return total


@pytest.mark.parametrize("seed", SEEDS)
def test_gaussian_log_prob_and_entropy(seed):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(5, 3)).astype(np.float32)
    log_std = (0.5 * rng.normal(size=(5, 3))).astype(np.float32)
    actions = (mean + np.exp(log_std) * rng.normal(size=(5, 3))).astype(np.float32)
    head = P.GaussianPolicy()
    expected = [ref_gaussian_log_prob(mean[i], log_std[i], actions[i]) for i in range(5)]
    assert_close(head.log_prob((mean, log_std), actions), expected)
    # Entropy of N(m, s^2) per dimension: 0.5 * log(2 pi e s^2).
    assert_close(
        head.entropy((mean, log_std)),
        [sum(0.5 * math.log(2 * math.pi * math.e * math.exp(2 * s)) for s in row) for row in log_std],
    )
    np.testing.assert_array_equal(np.asarray(head.mode([mean, log_std])), mean)


def test_gaussian_state_independent_log_std_broadcasts_and_clips():
    mean = jnp.zeros((3, 2))
    log_std = jnp.array([-30.0, 5.0])  # clipped to [-20, 2]
    head = P.GaussianPolicy()
    assert_close(head.entropy((mean, log_std)), [(-20.0 + 2.0) + 2 * 0.5 * (1 + LOG_2PI)] * 3)
    actions = jnp.full((3, 2), 0.5)
    expected = ref_gaussian_log_prob([0.0, 0.0], [-20.0, 2.0], [0.0, 0.5])
    assert_close(head.log_prob((mean, log_std), actions.at[:, 0].set(0.0)), [expected] * 3)


def test_gaussian_sample_statistics():
    mean = jnp.broadcast_to(jnp.array([1.0, -2.0]), (20_000, 2))
    log_std = jnp.log(jnp.array([0.5, 2.0]))
    samples = np.asarray(P.GaussianPolicy().sample((mean, log_std), jax.random.key(1)))
    assert samples.shape == (20_000, 2)
    np.testing.assert_allclose(samples.mean(0), [1.0, -2.0], atol=0.05)
    np.testing.assert_allclose(samples.std(0), [0.5, 2.0], rtol=0.03)


def test_gaussian_rejects_non_pair_output():
    with pytest.raises(TypeError, match=r"expects the model to return \(mean, log_std\), got Array"):
        P.GaussianPolicy().log_prob(jnp.zeros((2, 3)), jnp.zeros((2, 3)))


# --------------------------------------------------------------------------- #
# Token log-probs (causal LM)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", SEEDS)
def test_token_log_probs_alignment(seed):
    rng = np.random.default_rng(seed)
    batch, steps, vocab = 3, 6, 7
    logits = rng.normal(size=(batch, steps, vocab)).astype(np.float32)
    tokens = rng.integers(0, vocab, size=(batch, steps))
    expected = np.zeros((batch, steps))
    expected_ent = np.zeros((batch, steps))
    for b in range(batch):
        for t in range(1, steps):
            # logits at position t-1 predict the token at position t.
            expected[b, t] = ref_log_softmax_row(logits[b, t - 1])[tokens[b, t]]
            expected_ent[b, t] = ref_entropy_row(logits[b, t - 1])
    got = P.token_log_probs(logits, tokens)
    assert got.shape == (batch, steps)
    assert_close(got, expected)
    assert np.all(np.asarray(got)[:, 0] == 0.0)
    assert_close(P.token_entropies(logits), expected_ent)
    assert_close(P.TokenPolicy().log_prob(logits, tokens), expected)
    assert_close(P.TokenPolicy().entropy(logits), expected_ent)

    # A completion mask over the token array selects exactly the completion's log-probs.
    prompt_len = 2
    completion_mask = np.arange(steps)[None, :] >= prompt_len
    seq_logp = np.asarray(jnp.sum(jnp.where(completion_mask, got, 0.0), axis=-1))
    for b in range(batch):
        manual = sum(ref_log_softmax_row(logits[b, t - 1])[tokens[b, t]] for t in range(prompt_len, steps))
        assert_close(seq_logp[b], manual)


def test_token_log_probs_bf16_logits_are_upcast():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.bfloat16)
    tokens = jnp.asarray(rng.integers(0, 5, size=(2, 4)))
    got = P.token_log_probs(logits, tokens)
    assert got.dtype == jnp.float32
    expected = P.token_log_probs(logits.astype(jnp.float32), tokens)
    assert_close(got, expected)


def test_token_policy_sample_uses_last_position():
    logits = jnp.full((2, 3, 4), -1e9).at[:, -1, 2].set(0.0).at[:, 0, 1].set(0.0)
    samples = P.TokenPolicy().sample(logits, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(samples), [2, 2])


# --------------------------------------------------------------------------- #
# Lookup and jit
# --------------------------------------------------------------------------- #


def test_get_policy_head():
    assert isinstance(P.get_policy_head("categorical"), P.CategoricalPolicy)
    assert isinstance(P.get_policy_head("gaussian"), P.GaussianPolicy)
    assert isinstance(P.get_policy_head("tokens"), P.TokenPolicy)
    custom = P.GaussianPolicy(min_log_std=-5.0)
    assert P.get_policy_head(custom) is custom
    with pytest.raises(
        ValueError, match=r"unknown policy 'beta'; expected one of \['categorical', 'gaussian', 'tokens'\]"
    ):
        P.get_policy_head("beta")
    with pytest.raises(TypeError, match="got int"):
        P.get_policy_head(3)


def test_heads_are_jittable():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5)).astype(np.float32)
    actions = rng.integers(0, 5, size=4)
    cat = P.CategoricalPolicy()
    assert_close(jax.jit(cat.log_prob)(logits, actions), cat.log_prob(logits, actions), rtol=1e-6, atol=1e-6)
    assert_close(jax.jit(cat.entropy)(logits), cat.entropy(logits), rtol=1e-6, atol=1e-6)
    gauss = P.GaussianPolicy()
    out = (logits[:, :2], logits[:, 2:4])
    assert_close(
        jax.jit(gauss.log_prob)(out, logits[:, :2]), gauss.log_prob(out, logits[:, :2]), rtol=1e-6, atol=1e-6
    )
    tok_logits = rng.normal(size=(2, 4, 5)).astype(np.float32)
    tokens = rng.integers(0, 5, size=(2, 4))
    assert_close(
        jax.jit(P.token_log_probs)(tok_logits, tokens),
        P.token_log_probs(tok_logits, tokens),
        rtol=1e-6,
        atol=1e-6,
    )
