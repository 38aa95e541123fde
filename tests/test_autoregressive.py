"""AutoregressiveTrainer: the masked next-token loss against numpy, masking, learning, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl.autoregressive import AutoregressiveTrainer, masked_next_token_loss
from artifex_rl.config import TrainerConfig
from artifex_rl.core.loss_terms import loss_value
from artifex_rl.models.transformer import TransformerLM
from artifex_rl.tasks import SortDigitsTask

VOCAB = 11


def _numpy_masked_nll(logits: np.ndarray, tokens: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """The loss and greedy accuracy by the definition, one token at a time."""
    total, correct, count = 0.0, 0.0, 0.0
    b, length, _ = logits.shape
    for i in range(b):
        for t in range(1, length):
            if mask[i, t] == 0:
                continue
            row = logits[i, t - 1].astype(np.float64)
            log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
            total += -(row[tokens[i, t]] - log_z) * mask[i, t]
            correct += float(np.argmax(row) == tokens[i, t]) * mask[i, t]
            count += mask[i, t]
    return total / count, correct / count


def _random_batch(seed: int, b: int = 4, length: int = 9) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (b, length)).astype(np.int32)
    # A "prompt" of random length per row, then targets; column 0 is never a target.
    prompt_len = rng.integers(1, length - 1, b)
    mask = (np.arange(length)[None] >= prompt_len[:, None]).astype(np.float32)
    return tokens, mask


def _model(seed: int = 0, max_len: int = 9) -> TransformerLM:
    return TransformerLM(VOCAB, max_len, d_model=32, num_layers=1, num_heads=2, rngs=nnx.Rngs(seed))


def test_masked_loss_matches_numpy_on_random_logits():
    rng = np.random.default_rng(0)
    tokens, mask = _random_batch(1)
    logits = rng.normal(size=(*tokens.shape, VOCAB)).astype(np.float32) * 3
    loss, metrics = masked_next_token_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
    want_loss, want_acc = _numpy_masked_nll(logits, tokens, mask)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["token_accuracy"]), want_acc, rtol=1e-6)
    assert float(metrics["num_target_tokens"]) == mask[:, 1:].sum()


def test_trainer_loss_matches_numpy_on_the_models_logits():
    model = _model()
    tokens, mask = _random_batch(2)
    trainer = AutoregressiveTrainer(model, optax.sgd(0.0))
    loss, metrics = trainer.compute_loss(model, {"tokens": tokens, "loss_mask": mask}, jax.random.key(0))
    logits = np.asarray(model(jnp.asarray(tokens)))
    want_loss, want_acc = _numpy_masked_nll(logits, tokens, mask)
    np.testing.assert_allclose(float(loss_value(loss)), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["token_accuracy"]), want_acc, rtol=1e-6)
    # The compiled step reports the same loss (computed before its update).
    step_metrics = trainer.train_step({"tokens": tokens, "loss_mask": mask})
    np.testing.assert_allclose(float(step_metrics["loss"]), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(step_metrics["perplexity"]), np.exp(want_loss), rtol=1e-5)


def test_prompt_tokens_do_not_contribute():
    rng = np.random.default_rng(3)
    tokens, mask = _random_batch(3)
    logits = jnp.asarray(rng.normal(size=(*tokens.shape, VOCAB)).astype(np.float32))

    def loss_of(lg):
        return masked_next_token_loss(lg, jnp.asarray(tokens), jnp.asarray(mask))[0]

    grads = np.asarray(jax.grad(loss_of)(logits))
    # logits[:, t - 1] predict token t: they matter exactly where mask[:, t] == 1.
    predicts_target = np.zeros(tokens.shape, bool)
    predicts_target[:, :-1] = mask[:, 1:] > 0
    assert np.all(grads[~predicts_target] == 0.0)
    assert np.all(np.abs(grads[predicts_target]).sum(-1) > 0)
    # Scrambling the logits that predict prompt tokens (and the last position) leaves the loss as it is.
    scrambled = np.where(predicts_target[..., None], np.asarray(logits), rng.normal(size=logits.shape) * 50)
    np.testing.assert_allclose(float(loss_of(jnp.asarray(scrambled))), float(loss_of(logits)), rtol=1e-6)
    # Column 0 of the mask is ignored (nothing predicts the first token).
    mask0 = mask.copy()
    mask0[:, 0] = 1.0
    np.testing.assert_allclose(
        float(masked_next_token_loss(logits, jnp.asarray(tokens), jnp.asarray(mask0))[0]),
        float(loss_of(logits)),
    )


def test_all_zero_mask_gives_zero_loss_and_gradient():
    model = _model()
    tokens, _ = _random_batch(4)
    trainer = AutoregressiveTrainer(model, optax.sgd(0.1))
    before = jax.tree.map(np.array, trainer.train_state["params"])
    metrics = trainer.train_step({"tokens": tokens, "loss_mask": np.zeros(tokens.shape, np.float32)})
    assert float(metrics["loss"]) == 0.0
    # Zero gradient: plain SGD leaves every parameter exactly where it was.
    jax.tree.map(np.testing.assert_array_equal, before, trainer.train_state["params"])


def test_attention_mask_is_passed_to_the_model():
    model = _model()
    tokens, mask = _random_batch(5)
    attention = np.ones(tokens.shape, np.float32)
    attention[:, 1] = 0.0  # hide one key: the logits after it change
    trainer = AutoregressiveTrainer(model, optax.sgd(0.0))
    with_mask, _ = trainer.compute_loss(
        model, {"tokens": tokens, "loss_mask": mask, "attention_mask": attention}, jax.random.key(0)
    )
    logits = np.asarray(model(jnp.asarray(tokens), mask=jnp.asarray(attention)))
    np.testing.assert_allclose(float(loss_value(with_mask)), _numpy_masked_nll(logits, tokens, mask)[0], rtol=1e-5)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({"tokens": np.zeros((2, 5), np.int32)}, "missing \\['loss_mask'\\]"),
        (
            {"tokens": np.zeros((2, 5), np.int32), "loss_mask": np.zeros((2, 4))},
            "loss_mask.*\\(2, 4\\).*\\(2, 5\\)",
        ),
        ({"tokens": np.zeros((2, 5), np.float32), "loss_mask": np.zeros((2, 5))}, "integer ids"),
        ({"tokens": np.zeros((10,), np.int32), "loss_mask": np.zeros((10,))}, "expected \\(B, L\\)"),
    ],
)
def test_bad_batches_get_clear_errors(batch, message):
    trainer = AutoregressiveTrainer(_model(max_len=5), optax.sgd(0.1))
    with pytest.raises((KeyError, ValueError), match=message):
        trainer.train_step(batch)


def test_pretraining_learns_the_task_and_compiles_once():
    """Teacher forcing on correct SortDigits answers: token accuracy on held-out rows goes up a lot."""
    task = SortDigitsTask(num_digits=4)
    model = TransformerLM(
        task.tokenizer.vocab_size,
        task.prompt_length + task.answer_length,
        d_model=64,
        num_layers=2,
        rngs=nnx.Rngs(0),
    )
    trainer = AutoregressiveTrainer(model, optax.adam(3e-3), TrainerConfig(log_every_n_steps=25))
    steps, batch = 150, 128
    demos = task.demonstrations(jax.random.key(0), steps * batch, noise=0.0)
    tokens = np.asarray(demos.tokens).reshape(steps, batch, -1)
    loss_mask = np.asarray(demos.loss_mask).reshape(steps, batch, -1)
    heldout = task.demonstrations(jax.random.key(1), 512, noise=0.0)

    def heldout_accuracy() -> float:
        logits = trainer.model(heldout.tokens)
        return float(masked_next_token_loss(logits, heldout.tokens, heldout.loss_mask)[1]["token_accuracy"])

    before = heldout_accuracy()
    trainer.fit(
        [{"tokens": t, "loss_mask": m} for t, m in zip(tokens, loss_mask, strict=True)], max_steps=steps
    )
    after = heldout_accuracy()
    assert trainer.trace_count == 1
    # Chance is ~1/16 per token; sorting 4 digits is learnt well within 150 steps.
    assert before < 0.25
    assert after > 0.75, (before, after)
    assert trainer.callback_metrics["token_accuracy"] > 0.75
