"""The generation layer: Completions, the samplers (KV cache and cache-free), sample_and_score,
temperature-consistent scoring, prompt masks, and completion sources fed a policy snapshot."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from artifex_rl.core.snapshot import PolicySnapshot
from artifex_rl.models.generate import GenerationOutput
from artifex_rl.models.sampling import DecoderLM, TokenSampler, kv_cache_sample, supports_kv_cache
from artifex_rl.models.transformer import TransformerLM
from artifex_rl.rl.generation import (
    Completions,
    RewardNotJittableError,
    reward_is_jittable,
    sample_and_score,
    score_completions,
)
from tests._lm_models import UserLM, np_log_softmax

VOCAB, MAX_LEN, EOS, PAD = 12, 24, 2, 0
B, P, N = 8, 5, 7


@pytest.fixture(scope="module")
def lm() -> TransformerLM:
    def build():
        return TransformerLM(VOCAB, MAX_LEN, d_model=32, num_layers=2, num_heads=4, rngs=nnx.Rngs(0))

    return nnx.merge(nnx.graphdef(nnx.eval_shape(build)), jax.jit(lambda: nnx.state(build()))())


def _prompts(batch: int = B, length: int = P, seed: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, length), 3, VOCAB, jnp.int32)


@jax.jit(static_argnums=4)
def _sample(model, prompts, key, prompt_mask, sampler):
    return sampler(model, prompts, key, prompt_mask=prompt_mask)


# --------------------------------------------------------------------------- #
# Samplers
# --------------------------------------------------------------------------- #
def test_protocol_detection(lm):
    assert isinstance(lm, DecoderLM) and supports_kv_cache(lm)
    user = UserLM(VOCAB, rngs=nnx.Rngs(0))
    assert not supports_kv_cache(user)
    with pytest.raises(TypeError, match=r"lacks \['vocab_size', 'max_len', 'init_cache', 'prefill', 'decode_step'\]"):
        kv_cache_sample(user, _prompts(), jax.random.key(0), max_new_tokens=N)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_cache_free_sampler_equals_cache_sampler_with_left_padding(lm, temperature):
    """Same key, same model: the recompute loop emits the KV-cache sampler's tokens and log-probs,
    with left-padded prompts too."""
    rows, new = 16, 12
    prompts = np.array(_prompts(rows, P, seed=2))
    prompt_mask = np.ones_like(prompts)
    for row in range(rows):
        prompts[row, : row % 3], prompt_mask[row, : row % 3] = PAD, 0
    args = (lm, jnp.asarray(prompts), jax.random.key(11), jnp.asarray(prompt_mask))
    settings = dict(max_new_tokens=new, temperature=temperature, eos_id=EOS, pad_id=PAD)
    cached = _sample(*args, TokenSampler(**settings, use_cache=True))
    recomputed = _sample(*args, TokenSampler(**settings, use_cache=False))
    auto = _sample(*args, TokenSampler(**settings))  # a DecoderLM: the cache
    np.testing.assert_array_equal(cached.tokens, recomputed.tokens)
    np.testing.assert_array_equal(cached.completion_mask, recomputed.completion_mask)
    np.testing.assert_allclose(cached.log_probs, recomputed.log_probs, atol=1e-5)
    np.testing.assert_array_equal(cached.tokens, auto.tokens)
    assert cached.tokens.shape == (rows, new)
    assert 0 < float(cached.completion_mask.mean()) < 1, "the test needs rows that end early"


def test_left_padded_prompt_reads_like_the_unpadded_prompt(lm):
    """Positions follow the mask (C-L5): padding on the left changes neither tokens nor log-probs."""
    short = _prompts(length=3, seed=4)
    padded = jnp.concatenate([jnp.full((B, 2), PAD, jnp.int32), short], axis=1)
    mask = jnp.concatenate([jnp.zeros((B, 2), jnp.int32), jnp.ones((B, 3), jnp.int32)], axis=1)
    sampler = TokenSampler(max_new_tokens=N, temperature=1.0, eos_id=EOS)
    plain = _sample(lm, short, jax.random.key(5), None, sampler)
    left = _sample(lm, padded, jax.random.key(5), mask, sampler)
    np.testing.assert_array_equal(plain.tokens, left.tokens)
    np.testing.assert_allclose(plain.log_probs, left.log_probs, atol=1e-5)


def test_user_lm_without_cache_gets_the_recompute_sampler():
    model = UserLM(VOCAB, rngs=nnx.Rngs(1))
    sampler = TokenSampler(max_new_tokens=4, temperature=0.8)
    out = _sample(model, _prompts(), jax.random.key(0), None, sampler)
    assert isinstance(out, Completions) and out.tokens.shape == (B, 4)
    # The returned log-probs are the sampling distribution's: softmax(logits / 0.8), in numpy.
    full = np.asarray(out.full_tokens(_prompts()))
    logits = np.asarray(model(jnp.asarray(full)), np.float64)[:, P - 1 : -1] / 0.8
    expected = np.take_along_axis(np_log_softmax(logits), full[:, P:, None], -1)[..., 0]
    np.testing.assert_allclose(out.log_probs, expected, atol=1e-5)
    # No mask support: a prompt mask is a clear error, not a silent misuse.
    with pytest.raises(TypeError, match="takes no mask= keyword"):
        _sample(model, _prompts(), jax.random.key(0), jnp.ones((B, P), jnp.int32), sampler)


# --------------------------------------------------------------------------- #
# Scoring under the sampling distribution
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("top_k", [None, 4])
def test_score_completions_is_log_softmax_of_tempered_logits(top_k):
    model = UserLM(VOCAB, rngs=nnx.Rngs(2))
    rng = np.random.default_rng(0)
    prompts, completions = rng.integers(0, VOCAB, (4, 3)), rng.integers(0, VOCAB, (4, 5))
    log_probs, entropies = score_completions(
        model, jnp.asarray(prompts), jnp.asarray(completions), temperature=0.7, top_k=top_k
    )
    tokens = np.concatenate([prompts, completions], axis=1)
    logits = np.asarray(model(jnp.asarray(tokens)), np.float64)[:, 2:-1] / 0.7
    if top_k is not None:
        kth = np.sort(logits, axis=-1)[..., -top_k][..., None]
        logits = np.where(logits >= kth, logits, -np.inf)
    logp = np_log_softmax(logits)
    expected = np.take_along_axis(logp, completions[..., None], -1)[..., 0]
    np.testing.assert_allclose(log_probs, expected, atol=1e-5)
    np.testing.assert_allclose(entropies, -(np.exp(logp) * np.where(np.isfinite(logp), logp, 0)).sum(-1), atol=1e-5)


# --------------------------------------------------------------------------- #
# sample_and_score
# --------------------------------------------------------------------------- #
def _target_reward(tokens, conditions, completion_mask):
    """``10 * condition + fraction of valid tokens equal to 5``: who a reward belongs to shows."""
    hits = jnp.sum((tokens == 5) * completion_mask, axis=-1) / jnp.maximum(jnp.sum(completion_mask, axis=-1), 1)
    return 10.0 * conditions + hits


def test_sample_and_score_groups_prompts_and_pairs_rewards(lm):
    prompts, conditions = _prompts(batch=3), jnp.arange(3.0)
    sampler = TokenSampler(max_new_tokens=N, eos_id=EOS)
    scored = jax.jit(sample_and_score, static_argnums=(0, 1, 6))(
        sampler, _target_reward, lm, prompts, conditions, jax.random.key(1), 4
    )
    np.testing.assert_array_equal(scored.prompts, np.repeat(np.asarray(prompts), 4, axis=0))
    np.testing.assert_array_equal(scored.conditions, np.repeat(np.arange(3.0), 4))
    tokens, mask = np.asarray(scored.completions.tokens), np.asarray(scored.completions.completion_mask)
    hits = ((tokens == 5) * mask).sum(-1) / np.maximum(mask.sum(-1), 1)
    np.testing.assert_allclose(scored.rewards, 10.0 * np.repeat(np.arange(3.0), 4) + hits, atol=1e-6)
    batch = scored.as_batch()
    assert set(batch) == {"observations", "actions", "completion_mask", "log_probs", "rewards"}


def test_host_reward_is_detected_by_tracing_the_reward_alone(lm):
    def numpy_reward(tokens, conditions, completion_mask=None):
        return (np.asarray(tokens)[:, 0] == 5).astype(np.float32)

    sampler = TokenSampler(max_new_tokens=3)
    completions = _sample(lm, _prompts(), jax.random.key(0), None, sampler)
    assert not reward_is_jittable(numpy_reward, completions, None)
    assert reward_is_jittable(_target_reward, completions, jnp.zeros(B))
    with pytest.raises(RewardNotJittableError, match="numpy_reward"):
        jax.jit(lambda m, p: sample_and_score(sampler, numpy_reward, m, p, None, jax.random.key(0)))(lm, _prompts())
    # Eagerly (no trace) the same call works: the reward gets concrete arrays.
    scored = sample_and_score(sampler, numpy_reward, lm, _prompts(batch=2), None, jax.random.key(0))
    assert scored.rewards.shape == (2,)


def test_a_sampler_returning_whole_sequences_is_a_clear_error(lm):
    def old_style(model, prompts, key):
        out = kv_cache_sample(model, prompts, key, max_new_tokens=3)
        return GenerationOutput(out.full_tokens(prompts), out.completion_mask, out.log_probs, out.lengths)

    with pytest.raises(TypeError, match=r"returns artifex_rl.rl.generation.Completions.*from_full"):
        sample_and_score(old_style, _target_reward, lm, _prompts(batch=2), jnp.zeros(2), jax.random.key(0))


# --------------------------------------------------------------------------- #
# Sources get a policy snapshot, not the trainer
# --------------------------------------------------------------------------- #
def test_completion_source_follows_the_policy_provider():
    from artifex_rl.recipes import lm as recipes
    from artifex_rl.recipes.lm.settings import ModelSettings

    task = recipes.make_task("digit_sum")
    model = recipes.build_model(task, ModelSettings(d_model=16, num_layers=1, num_heads=2), seed=0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    snapshots = []

    def provider():
        snapshots.append(1)
        return PolicySnapshot(graphdef, params, rest)

    source = recipes.CompletionSource(provider, task, batch_size=6, seed=0)
    assert source.depends_on_policy is True
    batch = next(iter(source))
    assert snapshots == [1]  # read at every batch: the batch uses the policy of that moment
    assert batch["actions"].shape == (6, task.answer_length) and batch["rewards"].shape == (6,)
    assert set(batch) == {"observations", "actions", "completion_mask", "rewards"}
    with pytest.raises(TypeError, match="not a fixed model"):
        recipes.CompletionSource(model, task, batch_size=6, seed=0)
