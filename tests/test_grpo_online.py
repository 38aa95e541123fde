"""Online GRPO through the generation layer: a user's own LM with the default sampler, the
sampling temperature in the scores (C-M6), the host-reward path (pairing, padding, group size:
C-L3) and reward-function changes under every compiled entry point (C-L2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl.models.transformer import TransformerLM
from artifex_rl.rl import GRPOConfig, GRPOTrainer
from tests._lm_models import CurrentTokenLM, UserLM, current_token_logits, np_log_softmax

VOCAB, EOS, PAD = 6, 1, 0


def _prompts(n: int = 3, length: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, VOCAB, (n, length)).astype(np.int32)


def _jnp_reward(tokens, conditions, completion_mask):
    """Jittable: ``condition + fraction of valid tokens equal to 3``."""
    hits = jnp.sum((tokens == 3) * completion_mask, axis=-1) / jnp.maximum(jnp.sum(completion_mask, axis=-1), 1)
    return conditions + hits


def _np_reward(tokens, conditions, completion_mask):
    """Host only (numpy on the values): ``10 * condition + fraction of valid tokens equal to 3``."""
    tokens, mask = np.asarray(tokens), np.asarray(completion_mask)
    hits = ((tokens == 3) * mask).sum(-1) / np.maximum(mask.sum(-1), 1)
    return (10.0 * np.asarray(conditions) + hits).astype(np.float32)


def _np_group_advantages(rewards: np.ndarray, group_size: int, eps: float = 1e-4) -> np.ndarray:
    out = []
    for group in rewards.reshape(-1, group_size).astype(np.float64):
        flat = group.max() == group.min()
        out.append(np.zeros_like(group) if flat else (group - group.mean()) / (group.std() + eps))
    return np.concatenate(out)


def test_a_users_own_lm_trains_online_with_the_default_sampler():
    """Only model(tokens) -> logits: the cache-free sampler, no AttributeError, on-policy start."""
    config = GRPOConfig(num_generations=4, max_new_tokens=4, eos_id=EOS, pad_id=PAD, beta=0.04)
    trainer = GRPOTrainer(UserLM(VOCAB, rngs=nnx.Rngs(0)), optax.sgd(0.1), config, reward_fn=_jnp_reward)
    batch = {"prompts": _prompts(), "conditions": np.zeros(3, np.float32)}
    first = jax.device_get(trainer.train_step(batch, _jnp_reward, jax.random.key(0)))
    assert abs(first["approx_kl"]) < 1e-6 and first["clip_fraction"] == 0.0 and abs(first["kl"]) < 1e-6
    second = jax.device_get(trainer.train_step(batch, _jnp_reward, jax.random.key(0)))
    assert all(np.isfinite(v) for v in second.values())
    assert trainer.trace_count == 1 and trainer.reward_on_host is False
    assert trainer.last_outputs["completions"].shape == (12, 4)


def test_online_grpo_at_temperature_07_with_left_padded_prompts_starts_on_policy():
    """The KV-cache sampler's log-probs and the update's scores share softmax(logits / 0.7)
    and the prompt mask."""
    model = TransformerLM(VOCAB, 8, d_model=16, num_layers=1, num_heads=2, rngs=nnx.Rngs(1))
    config = GRPOConfig(num_generations=4, max_new_tokens=4, eos_id=EOS, temperature=0.7, beta=0.04)
    trainer = GRPOTrainer(model, optax.sgd(0.1), config, reward_fn=_jnp_reward)
    prompts, prompt_mask = _prompts(length=3), np.ones((3, 3), np.int32)
    prompts[0, 0] = prompt_mask[0, 0] = 0  # one left-padded prompt
    batch = {"prompts": prompts, "prompt_mask": prompt_mask, "conditions": np.zeros(3, np.float32)}
    metrics = jax.device_get(trainer.train_step(batch, key=jax.random.key(1)))
    assert abs(metrics["approx_kl"]) < 1e-6 and metrics["clip_fraction"] == 0.0 and abs(metrics["kl"]) < 1e-6


def test_the_update_scores_tokens_at_the_sampling_temperature():
    """Old log-probs from log_softmax(logits / T) in numpy give ratio 1 exactly; plain softmax ones do not."""
    model = CurrentTokenLM(VOCAB, rngs=nnx.Rngs(2))
    params = model.numpy_params()
    rng = np.random.default_rng(3)
    prompts, completions = _prompts(4), rng.integers(0, VOCAB, (4, 5)).astype(np.int32)
    logits = current_token_logits(params, np.concatenate([prompts, completions], 1))[:, 1:-1]

    def step(temperature_of_old_log_probs: float) -> dict:
        trainer = GRPOTrainer(CurrentTokenLM(VOCAB, rngs=nnx.Rngs(2)), optax.sgd(0.0),
                              GRPOConfig(num_generations=2, temperature=0.7, beta=0.0))
        logp = np_log_softmax(logits / temperature_of_old_log_probs)
        old = np.take_along_axis(logp, completions[..., None], -1)[..., 0].astype(np.float32)
        batch = {"prompts": prompts, "actions": completions, "log_probs": old,
                 "rewards": np.array([1.0, 0.0, 0.5, 0.2], np.float32)}
        return jax.device_get(trainer.train_step(batch))

    assert abs(step(0.7)["approx_kl"]) < 1e-6
    assert step(1.0)["approx_kl"] > 1e-3


def test_grpo_rejects_sampling_settings_it_cannot_optimise():
    model = CurrentTokenLM(VOCAB, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="top_k must be None, got 3"):
        GRPOTrainer(model, optax.sgd(0.1), GRPOConfig(top_k=3, beta=0.0))
    with pytest.raises(ValueError, match="temperature must be > 0, got 0.0"):
        GRPOTrainer(model, optax.sgd(0.1), GRPOConfig(temperature=0.0, beta=0.0))


def test_host_reward_step_pairs_rewards_with_completions_and_trains_no_padding():
    """The loss of a host-reward step equals a numpy GRPO loss computed from the step's own
    completions: rewards belong to their completions, tokens after EOS weigh nothing."""
    temperature, coeff, g = 0.9, 0.05, 4
    model = CurrentTokenLM(VOCAB, rngs=nnx.Rngs(4))
    params = model.numpy_params()
    config = GRPOConfig(num_generations=g, beta=0.0, entropy_coeff=coeff, loss_type="bnpo", max_new_tokens=5,
                        eos_id=EOS, pad_id=PAD, temperature=temperature)
    trainer = GRPOTrainer(model, optax.sgd(0.1), config)
    prompts, conditions = _prompts(3), np.arange(3.0, dtype=np.float32)
    metrics = jax.device_get(trainer.train_step({"prompts": prompts, "conditions": conditions}, _np_reward,
                                                jax.random.key(5)))
    assert trainer.reward_on_host is True
    out = jax.device_get(trainer.last_outputs)
    completions, mask = out["completions"], out["completion_mask"]
    assert completions.shape == (12, 5) and 0 < mask.mean() < 1, "the test needs padding after EOS"
    np.testing.assert_allclose(out["rewards"], _np_reward(completions, np.repeat(conditions, g), mask), rtol=1e-6)

    tokens = np.concatenate([np.repeat(prompts, g, axis=0), completions], axis=1)
    logp = np_log_softmax(current_token_logits(params, tokens)[:, 1:-1] / temperature)
    entropy = -(np.exp(logp) * logp).sum(-1)
    advantages = _np_group_advantages(_np_reward(completions, np.repeat(conditions, g), mask), g)
    per_token = -advantages[:, None] - coeff * entropy  # first update: ratio 1
    np.testing.assert_allclose(metrics["loss"], (mask * per_token).sum() / mask.sum(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        metrics["policy_loss"], (mask * -advantages[:, None]).sum() / mask.sum(), rtol=1e-5, atol=1e-6
    )

    # The group size follows the batch, not the first call (C-L3).
    trainer.train_step({"prompts": prompts, "conditions": conditions, "group_size": 3}, _np_reward)
    rewards = np.asarray(trainer.last_outputs["rewards"])
    assert rewards.shape == (9,)
    np.testing.assert_array_equal(np.floor(rewards / 10), np.repeat(conditions, 3))


def test_fit_with_several_steps_per_call_and_a_host_reward():
    config = GRPOConfig(num_generations=2, beta=0.0, max_new_tokens=3, eos_id=EOS, steps_per_execution=2,
                        log_every_n_steps=2)
    trainer = GRPOTrainer(CurrentTokenLM(VOCAB, rngs=nnx.Rngs(6)), optax.sgd(0.1), config, reward_fn=_np_reward)
    loader = [{"prompts": _prompts(seed=i), "conditions": np.full(3, float(i), np.float32)} for i in range(4)]
    trainer.fit(loader, max_steps=4)
    assert trainer.global_step == 4 and trainer.reward_on_host is True
    assert trainer.callback_metrics["mean_reward"] >= 20.0  # batches 2 and 3: conditions 2 and 3


def test_a_new_reward_fn_reaches_every_compiled_path():
    """C-L2: after train_step(batch, other_reward), fit with fused steps uses other_reward too."""
    def zeros(tokens, conditions, completion_mask):
        return jnp.zeros(tokens.shape[0])

    def ones(tokens, conditions, completion_mask):
        return jnp.ones(tokens.shape[0])

    config = GRPOConfig(num_generations=2, beta=0.0, max_new_tokens=3, steps_per_execution=2, log_every_n_steps=2)
    trainer = GRPOTrainer(CurrentTokenLM(VOCAB, rngs=nnx.Rngs(7)), optax.sgd(0.1), config, reward_fn=zeros)
    loader = [{"prompts": _prompts(seed=i)} for i in range(8)]
    trainer.fit(loader, max_steps=2, max_epochs=None)
    assert trainer.callback_metrics["mean_reward"] == 0.0
    assert float(trainer.train_step(loader[0], ones)["mean_reward"]) == 1.0
    # Step 3 runs alone (a chunk ends at the log step 4); steps 4-5 are a chunk of 2, the
    # shape fit compiled with zeros: it must be traced again.
    trainer.fit(loader, max_steps=6, max_epochs=None)
    assert trainer.global_step == 6 and trainer.callback_metrics["mean_reward"] == 1.0


def test_a_model_error_is_not_taken_for_a_host_reward():
    class NeedsConcreteTokens(CurrentTokenLM):
        def __call__(self, tokens):
            if tokens[0, 0] > 0:  # a bug of the model, not of the reward
                return super().__call__(tokens)
            return super().__call__(tokens + 1)

    trainer = GRPOTrainer(NeedsConcreteTokens(VOCAB, rngs=nnx.Rngs(8)), optax.sgd(0.1),
                          GRPOConfig(num_generations=2, beta=0.0, max_new_tokens=3), reward_fn=_jnp_reward)
    with pytest.raises(jax.errors.TracerBoolConversionError):
        trainer.train_step({"prompts": _prompts(), "conditions": np.zeros(3, np.float32)})
    assert not trainer.reward_on_host
