"""Tiny causal transformer LM and its KV-cache / cache-free samplers."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from artifex_rl.models.transformer import (
    Sampler,
    TransformerLM,
    generate,
    generate_trace_count,
    generate_without_cache,
)
from artifex_rl.rl.policies import token_log_probs

VOCAB, MAX_LEN = 12, 24
EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def model() -> TransformerLM:
    def build() -> TransformerLM:
        return TransformerLM(VOCAB, MAX_LEN, d_model=32, num_layers=2, num_heads=4, rngs=nnx.Rngs(0))

    # Initialised under one jit: eager init compiles every initializer op separately.
    return nnx.merge(nnx.graphdef(nnx.eval_shape(build)), jax.jit(lambda: nnx.state(build()))())


@functools.cache
def _compiled_forward(graphdef: nnx.GraphDef):
    return jax.jit(lambda state, tokens, mask: nnx.merge(graphdef, state)(tokens, mask=mask))


def _logits(model: TransformerLM, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``model(tokens, mask=mask)``, compiled once per shape (eager dispatch is slow on CPU)."""
    graphdef, state = nnx.split(model)
    return _compiled_forward(graphdef)(state, tokens, mask)


def _prompts(batch: int, length: int, seed: int = 1) -> jax.Array:
    # Ids >= 3 keep EOS/PAD out of the prompts.
    return jax.random.randint(jax.random.key(seed), (batch, length), 3, VOCAB, jnp.int32)


# ------------------------------------------------------------ forward pass


def _numpy_forward(model: TransformerLM, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Plain float64 numpy re-implementation, one query position at a time."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.to_pure_dict(nnx.state(model)))

    def layer_norm(x, prm):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * prm["scale"] + prm["bias"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    def linear(x, prm):
        return x @ prm["kernel"] + prm["bias"]

    b, t = tokens.shape
    heads, dh = model.num_heads, model.head_dim
    # A real token's position is the number of real tokens before it (the array
    # index without a mask); a padding token's is that of the last real token
    # before it (0 if none). Padding only ever attends to itself.
    positions = np.zeros((b, t), np.int64)
    for i in range(b):
        for k in range(t):
            real_so_far = k + 1 if mask is None else int(np.sum(mask[i, : k + 1]))
            positions[i, k] = max(real_so_far - 1, 0)
    x = p["embed"]["embedding"][tokens] + p["pos_embed"]["embedding"][positions]
    for blk in p["blocks"].values():
        qkv = linear(layer_norm(x, blk["norm1"]), blk["qkv"]).reshape(b, t, 3, heads, dh)
        att = np.zeros((b, t, heads, dh))
        for i in range(b):
            for q in range(t):
                keys = [k for k in range(q + 1) if mask is None or mask[i, k] or k == q]
                for h in range(heads):
                    s = np.array([qkv[i, q, 0, h] @ qkv[i, k, 1, h] for k in keys]) / math.sqrt(dh)
                    w = np.exp(s - s.max())
                    w /= w.sum()
                    att[i, q, h] = sum(wk * qkv[i, k, 2, h] for wk, k in zip(w, keys, strict=True))
        x = x + linear(att.reshape(b, t, -1), blk["out"])
        x = x + linear(gelu(linear(layer_norm(x, blk["norm2"]), blk["up"])), blk["down"])
    return layer_norm(x, p["final_norm"]) @ p["embed"]["embedding"].T


def test_forward_matches_numpy_reference(model):
    tokens = np.asarray(_prompts(2, 7))
    np.testing.assert_allclose(_logits(model, jnp.asarray(tokens)), _numpy_forward(model, tokens), atol=2e-4)


def test_padding_mask_matches_numpy_reference(model):
    tokens = np.asarray(_prompts(2, 6))
    mask = np.array([[0, 0, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1]], np.int32)
    got = _logits(model, jnp.asarray(tokens), jnp.asarray(mask))
    np.testing.assert_allclose(got, _numpy_forward(model, tokens, mask), atol=2e-4)
    assert np.isfinite(np.asarray(got)).all()


def test_shapes_and_variants(model):
    logits = _logits(model, _prompts(3, 5))
    assert logits.shape == (3, 5, VOCAB) and logits.dtype == jnp.float32
    assert model.lm_head is None  # tied: logits = h @ embedding^T
    # Untied head + RMSNorm: a separate (D, V) projection. Abstract (eval_shape):
    # building and compiling a second model only to read shapes is slow on CPU.
    untied = nnx.eval_shape(
        lambda: TransformerLM(
            VOCAB,
            MAX_LEN,
            d_model=16,
            num_layers=1,
            num_heads=2,
            tie_embeddings=False,
            norm="rmsnorm",
            rngs=nnx.Rngs(3),
        )
    )
    assert untied.lm_head.kernel.shape == (16, VOCAB)
    assert isinstance(untied.final_norm, nnx.RMSNorm)
    graphdef, state = nnx.split(untied)
    out = jax.eval_shape(lambda s, t: nnx.merge(graphdef, s)(t), state, _prompts(3, 5))
    assert out.shape == (3, 5, VOCAB)


def test_causal_property(model):
    tokens = _prompts(3, 10)
    changed = tokens.at[:, 6].set((tokens[:, 6] + 1 - 3) % (VOCAB - 3) + 3)
    a, b = _logits(model, tokens), _logits(model, changed)
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert np.abs(np.asarray(a[:, 6:] - b[:, 6:])).max(axis=-1).min() > 1e-4


def test_bad_shapes_raise(model):
    with pytest.raises(ValueError, match="max_len is 24"):
        model(jnp.zeros((1, MAX_LEN + 1), jnp.int32))
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 4\)"):
        model(jnp.zeros((2, 4), jnp.int32), mask=jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TransformerLM(VOCAB, MAX_LEN, d_model=10, num_heads=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"shape \(2, 20\) plus max_new_tokens=8 need 28"):
        generate(model, jnp.full((2, 20), 3, jnp.int32), 8, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"top_k must be in \[1, vocab_size=12\]"):
        generate(model, _prompts(2, 4), 4, key=jax.random.key(0), top_k=13)
    with pytest.raises(ValueError, match="prompt_mask must have shape"):
        generate(model, _prompts(2, 4), 4, key=jax.random.key(0), prompt_mask=jnp.ones((2, 3)))


# --------------------------------------------------------------- sampling
# Every distinct (shape, settings) pair is a compilation (seconds on a shared
# CPU), so the tests below reuse a few: B=16 prompts of P=5, N=12 new tokens.
B, P, N = 16, 5, 12
SETTINGS = {
    "t1": dict(temperature=1.0),
    "t0.7-top4": dict(temperature=0.7, top_k=4),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_cache_sampler_equals_recompute_sampler(model, name):
    settings = SETTINGS[name]
    prompts = _prompts(B, P)
    key = jax.random.key(7)
    cached = generate(model, prompts, N, key=key, eos_id=EOS, pad_id=PAD, **settings)
    reference = generate_without_cache(model, prompts, N, key=key, eos_id=EOS, pad_id=PAD, **settings)
    np.testing.assert_array_equal(cached.tokens, reference.tokens)
    np.testing.assert_array_equal(cached.completion_mask, reference.completion_mask)
    np.testing.assert_allclose(cached.log_probs, reference.log_probs, atol=1e-5)
    assert cached.tokens.shape == (B, P + N)
    np.testing.assert_array_equal(cached.tokens[:, :P], prompts)

    # The log-probs are the sampling distribution's, softmax(top_k(logits) / T),
    # computed here in numpy from the full forward: what a trainer that scores
    # with the sampler's temperature recomputes.
    logits = _logits(model, cached.tokens)
    pred = np.asarray(logits, np.float64)[:, P - 1 : -1] / settings["temperature"]
    if "top_k" in settings:
        kth = np.sort(pred, axis=-1)[..., -settings["top_k"]][..., None]
        pred = np.where(pred >= kth, pred, -np.inf)
    log_softmax = pred - pred.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    sampled = np.asarray(cached.tokens)[:, P:]
    expected = np.take_along_axis(log_softmax, sampled[..., None], -1)[..., 0]
    live = np.asarray(cached.completion_mask)[:, P:] > 0
    np.testing.assert_allclose(np.asarray(cached.log_probs)[:, P:][live], expected[live], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(cached.log_probs)[:, P:][~live], 0.0)

    if "top_k" in settings:
        # Every sampled token ranks within the top k of its (policy) logits.
        pred = np.asarray(logits)[:, P - 1 : -1]
        rank = (pred > np.take_along_axis(pred, sampled[..., None], -1)).sum(-1)
        assert rank[live].max() < settings["top_k"]


def test_padding_after_eos(model):
    # Same shapes and settings as the "t1" case above: reuses its compiled program.
    out = generate(model, _prompts(B, P, seed=2), N, key=jax.random.key(11), eos_id=EOS, pad_id=PAD)
    tokens, mask, logp = (np.asarray(x) for x in (out.tokens, out.completion_mask, out.log_probs))
    completion = tokens[:, P:]
    saw_eos = 0
    for row in range(B):
        eos_at = np.flatnonzero(completion[row] == EOS)
        length = N if eos_at.size == 0 else eos_at[0] + 1
        saw_eos += eos_at.size > 0
        assert out.lengths[row] == length
        np.testing.assert_array_equal(mask[row, :P], 0)
        np.testing.assert_array_equal(mask[row, P : P + length], 1)
        np.testing.assert_array_equal(mask[row, P + length :], 0)
        np.testing.assert_array_equal(completion[row, length:], PAD)
        np.testing.assert_array_equal(logp[row, :P], 0.0)
        np.testing.assert_array_equal(logp[row, P + length :], 0.0)
        assert (logp[row, P : P + length] < 0).all()
    assert 0 < saw_eos < B, "the test needs rows with and without an EOS"


def test_left_padded_prompts_with_prompt_mask(model):
    prompts = np.array(_prompts(B, P))
    prompt_mask = np.ones_like(prompts)
    for row in range(B):
        pad = row % P  # 0..4 padding tokens on the left
        prompts[row, :pad] = PAD
        prompt_mask[row, :pad] = 0
    kw = dict(key=jax.random.key(3), temperature=1.0, eos_id=EOS, prompt_mask=jnp.asarray(prompt_mask))
    cached = generate(model, jnp.asarray(prompts), N, **kw)
    reference = generate_without_cache(model, jnp.asarray(prompts), N, **kw)
    np.testing.assert_array_equal(cached.tokens, reference.tokens)
    full_mask = jnp.asarray(np.concatenate([prompt_mask, np.ones((B, N), np.int32)], axis=1))
    recomputed = token_log_probs(_logits(model, cached.tokens, full_mask), cached.tokens)
    np.testing.assert_allclose(cached.log_probs, recomputed * cached.completion_mask, atol=1e-5)


def test_top_k_one_is_greedy(model):
    prompts = _prompts(B, P, seed=3)
    greedy = generate(model, prompts, N, key=jax.random.key(0), temperature=0.0, eos_id=EOS, pad_id=PAD)
    top1 = generate(
        model, prompts, N, key=jax.random.key(5), temperature=2.0, top_k=1, eos_id=EOS, pad_id=PAD
    )
    np.testing.assert_array_equal(greedy.tokens, top1.tokens)
    # Greedy = argmax of the policy logits at every generated position.
    pred = np.asarray(_logits(model, greedy.tokens))[:, P - 1 : -1].argmax(-1)
    live = np.asarray(greedy.completion_mask)[:, P:] > 0
    np.testing.assert_array_equal(np.asarray(greedy.tokens)[:, P:][live], pred[live])


def test_sampling_distribution_follows_temperature_and_top_k(model):
    # First new token after one fixed prompt, many rows: empirical frequencies
    # against softmax(top_k(logits) / T) computed independently in numpy.
    temperature, top_k, batch = 0.6, 5, 4000
    prompt = _prompts(1, P)
    out = generate(
        model, jnp.tile(prompt, (batch, 1)), 1, key=jax.random.key(9), temperature=temperature, top_k=top_k
    )
    logits = np.asarray(_logits(model, prompt))[0, -1].astype(np.float64)
    keep = np.argsort(-logits)[:top_k]
    expected = np.zeros(VOCAB)
    expected[keep] = np.exp(logits[keep] / temperature - (logits[keep] / temperature).max())
    expected /= expected.sum()
    freq = np.bincount(np.asarray(out.tokens[:, -1]), minlength=VOCAB) / batch
    # Binomial std <= sqrt(0.25 / 4000) = 0.008: 0.03 is ~4 sigma.
    np.testing.assert_allclose(freq, expected, atol=0.03)


def test_sampler_compiles_once_per_shape(model):
    graphdef, state = nnx.split(model)
    # Settings used by no other test, so the first call below must trace.
    sampler = Sampler(graphdef, max_new_tokens=6, temperature=0.9, top_k=5, eos_id=EOS)
    prompts = _prompts(4, 3)
    before = generate_trace_count()
    first = sampler(state, prompts, key=jax.random.key(0))
    # New parameters (same structure), new key, new prompt values: no retrace.
    shifted = jax.tree.map(lambda x: x * 1.01, state)
    sampler(shifted, prompts, key=jax.random.key(1))
    sampler(state, _prompts(4, 3, seed=4), key=jax.random.key(2))
    assert generate_trace_count() == before + 1
    # The convenience wrapper shares the compiled program.
    again = generate(model, prompts, 6, key=jax.random.key(0), temperature=0.9, top_k=5, eos_id=EOS)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert generate_trace_count() == before + 1
