"""artifex_rl.distributions: one categorical entropy and one next-token log-prob, used everywhere."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artifex_rl import distributions as D
from artifex_rl.autoregressive import masked_next_token_loss
from artifex_rl.rl import losses


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol
    )


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))


@pytest.mark.parametrize("seed", [0, 1])
def test_categorical_functions_against_numpy(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(3, 4, 6)).astype(np.float32)
    actions = rng.integers(0, 6, size=(3, 4))
    logp = np_log_softmax(logits)
    assert_close(
        D.categorical_log_prob(logits, actions), np.take_along_axis(logp, actions[..., None], -1)[..., 0]
    )
    assert_close(D.categorical_entropy(logits), -(np.exp(logp) * logp).sum(-1))
    # Every entropy in the package is this one.
    assert_close(D.CategoricalPolicy().entropy(logits), D.categorical_entropy(logits))
    assert_close(losses.compute_policy_entropy(logits), np.mean(-(np.exp(logp) * logp).sum(-1)))


def test_low_precision_logits_are_promoted():
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 7)), jnp.bfloat16)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 7, size=(2, 5)))
    assert D.categorical_entropy(logits).dtype == jnp.float32
    assert D.token_log_probs(logits, tokens).dtype == jnp.float32
    assert_close(D.token_log_probs(logits, tokens), D.token_log_probs(logits.astype(jnp.float32), tokens))


@pytest.mark.parametrize("seed", [0, 1])
def test_next_token_loss_uses_token_log_probs(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(3, 5, 4)).astype(np.float32)
    tokens = rng.integers(0, 4, size=(3, 5))
    mask = (rng.random((3, 5)) < 0.6).astype(np.float32)
    mask[:, 0] = 0.0
    mask[0, 1] = 1.0
    logp = np_log_softmax(logits)
    nll = [-logp[b, t - 1, tokens[b, t]] for b in range(3) for t in range(1, 5) if mask[b, t]]
    loss, metrics = masked_next_token_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
    assert_close(loss, np.mean(nll))
    correct = [logits[b, t - 1].argmax() == tokens[b, t] for b in range(3) for t in range(1, 5) if mask[b, t]]
    assert_close(metrics["token_accuracy"], np.mean(correct))


@pytest.mark.parametrize("seed", [0, 1])
def test_gaussian_functions_against_numpy(seed):
    rng = np.random.default_rng(seed)
    mean, log_std, actions = rng.normal(size=(3, 4, 2))
    expected = np.zeros(4)
    for b in range(4):
        for d in range(2):
            s = math.exp(log_std[b, d])
            expected[b] += -0.5 * ((actions[b, d] - mean[b, d]) / s) ** 2 - math.log(
                s * math.sqrt(2 * math.pi)
            )
    f32 = [x.astype(np.float32) for x in (mean, log_std, actions)]
    assert_close(D.gaussian_log_prob(*f32), expected)
    assert_close(D.gaussian_entropy(f32[1]), (log_std + 0.5 * (1 + math.log(2 * math.pi))).sum(-1))


def test_score_sequences_scores_the_completion_tokens():
    rng = np.random.default_rng(4)
    table = jnp.asarray(rng.normal(size=(5, 5)), jnp.float32)

    def model(tokens):  # logits depend on the current token only
        return table[tokens]

    prompts, completions = jnp.array([[1, 2]]), jnp.array([[3, 0, 4]])
    logp, ent = D.score_sequences(model, prompts, completions)
    table_logp = np_log_softmax(np.asarray(table))
    prev = [2, 3, 0]
    assert_close(logp[0], [table_logp[p, c] for p, c in zip(prev, [3, 0, 4], strict=True)])
    assert_close(ent[0], [-(np.exp(table_logp[p]) * table_logp[p]).sum() for p in prev])
    assert jax.tree.map(jnp.shape, (logp, ent)) == ((1, 3), (1, 3))
