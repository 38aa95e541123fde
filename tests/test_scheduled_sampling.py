"""AutoregressiveTrainer's scheduled sampling: the replaced inputs, the loss against numpy, the warm-up."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from artifex_rl.autoregressive import AutoregressiveConfig, AutoregressiveTrainer, scheduled_sampling_inputs
from tests.test_autoregressive import _model, _numpy_masked_nll, _random_batch


def test_only_target_tokens_are_replaced_at_about_the_requested_rate():
    tokens, mask = _random_batch(0, b=64, length=9)
    predictions = (tokens + 1) % 11
    key = jax.random.key(0)
    assert np.array_equal(scheduled_sampling_inputs(tokens, predictions, mask, 0.0, key), tokens)
    all_replaced = np.asarray(scheduled_sampling_inputs(tokens, predictions, mask, 1.0, key))
    want = np.where(mask > 0, predictions, tokens)
    want[:, 0] = tokens[:, 0]
    np.testing.assert_array_equal(all_replaced, want)
    half = np.asarray(scheduled_sampling_inputs(tokens, predictions, mask, 0.3, key))
    rate = np.sum(half != tokens) / np.sum(mask[:, 1:] > 0)
    assert 0.25 < rate < 0.35


def test_loss_with_p_one_matches_numpy_on_the_models_own_greedy_inputs():
    model = _model()
    tokens, mask = _random_batch(2)
    config = AutoregressiveConfig(scheduled_sampling_prob=1.0)
    trainer = AutoregressiveTrainer(model, optax.sgd(0.0), config)
    greedy = np.argmax(np.asarray(model(jnp.asarray(tokens))), axis=-1)
    inputs = tokens.copy()
    for i in range(tokens.shape[0]):
        for t in range(1, tokens.shape[1]):
            if mask[i, t] > 0:
                inputs[i, t] = greedy[i, t - 1]
    want_loss, _ = _numpy_masked_nll(np.asarray(model(jnp.asarray(inputs))), tokens, mask)
    metrics = trainer.train_step({"tokens": tokens, "loss_mask": mask})
    np.testing.assert_allclose(float(metrics["loss"]), want_loss, rtol=1e-5)
    assert float(metrics["sampling_prob"]) == 1.0


def test_probability_warms_up_linearly_and_is_checkpointed_state():
    config = AutoregressiveConfig(scheduled_sampling_prob=0.5, scheduled_sampling_warmup_steps=4)
    trainer = AutoregressiveTrainer(_model(), optax.adam(1e-3), config)
    tokens, mask = _random_batch(3)
    probs = [float(trainer.train_step({"tokens": tokens, "loss_mask": mask})["sampling_prob"]) for _ in range(6)]
    np.testing.assert_allclose(probs, [0.0, 0.125, 0.25, 0.375, 0.5, 0.5])
    assert int(trainer.train_state["extra"]["step"]) == 6
    # a plain config keeps no extra state (old checkpoints stay loadable)
    assert AutoregressiveTrainer(_model(), optax.adam(1e-3)).train_state["extra"] == {}


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="scheduled_sampling_prob"):
        AutoregressiveConfig(scheduled_sampling_prob=1.5)
    with pytest.raises(ValueError, match="scheduled_sampling_warmup_steps"):
        AutoregressiveConfig(scheduled_sampling_warmup_steps=-1)
