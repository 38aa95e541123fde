"""Learning tests: each RL trainer improves a policy on a contextual bandit.

The bandit: a context is drawn, the policy picks one of ``A`` actions, and the
reward is 1 for the context's best action and 0 otherwise. The best action
depends on the context, so a policy must read its input to do well. The
policy's *expected* reward is computed exactly (softmax probabilities times
rewards, no sampling), before and after a short training run; each test asserts
a clear margin over the uniform policy's ``1 / A``.

Sampling uses ``jax.random`` with fixed keys, so every run is the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl import (
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    PPOConfig,
    PPOTrainer,
    REINFORCEConfig,
    REINFORCETrainer,
)
from artifex_rl.models.mlp import ActorCritic

N_CONTEXTS = 4
N_ACTIONS = 4
BEST_ACTION = np.array([2, 0, 3, 1])  # best action of each one-hot context
ALL_CONTEXTS = np.eye(N_CONTEXTS, dtype=np.float32)


class LinearPolicy(nnx.Module):
    """``(N, in_dim) -> logits (N, N_ACTIONS)``."""

    def __init__(self, in_dim: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(in_dim, N_ACTIONS, rngs=rngs)

    def __call__(self, obs):
        return self.linear(obs)


def policy_logits(model, obs):
    out = model(jnp.asarray(obs))
    return out[0] if isinstance(out, tuple) else out


def expected_reward(model, obs, best):
    """``mean_i sum_a pi(a | x_i) r(x_i, a)`` = the mean probability of the best action."""
    probs = np.asarray(jax.nn.softmax(policy_logits(model, obs), axis=-1), np.float64)
    return float(np.mean(probs[np.arange(len(best)), best]))


@jax.jit
def sample_actions(logits, key):
    """Actions and their log-probs under ``softmax(logits)``."""
    actions = jax.random.categorical(key, logits)
    log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), actions[:, None], axis=-1)[:, 0]
    return actions, log_probs


def one_hot_contexts(key, n):
    contexts = np.asarray(jax.random.randint(key, (n,), 0, N_CONTEXTS))
    return ALL_CONTEXTS[contexts], BEST_ACTION[contexts]


def test_reinforce_learns_the_contextual_bandit():
    model = LinearPolicy(N_CONTEXTS, rngs=nnx.Rngs(0))
    trainer = REINFORCETrainer(model, optax.adam(0.1), REINFORCEConfig(entropy_coeff=0.0))
    before = expected_reward(model, ALL_CONTEXTS, BEST_ACTION)
    key = jax.random.key(0)
    for _ in range(40):
        key, context_key, action_key = jax.random.split(key, 3)
        obs, best = one_hot_contexts(context_key, 64)
        actions, _ = sample_actions(policy_logits(trainer.model, obs), action_key)
        rewards = (np.asarray(actions) == best).astype(np.float32)
        # Independent one-step episodes: every step is terminal.
        trainer.train_step({"observations": obs, "actions": actions, "rewards": rewards,
                            "dones": np.ones(64, np.float32)})
    after = expected_reward(trainer.model, ALL_CONTEXTS, BEST_ACTION)
    assert before < 0.4
    assert after > 0.8, (before, after)
    assert trainer.trace_count == 1


def test_ppo_learns_the_contextual_bandit():
    model = ActorCritic(N_CONTEXTS, N_ACTIONS, hidden=(16,), rngs=nnx.Rngs(0))
    config = PPOConfig(update_epochs=2, num_minibatches=2, entropy_coeff=0.0)
    trainer = PPOTrainer(model, optax.adam(0.05), config)
    before = expected_reward(model, ALL_CONTEXTS, BEST_ACTION)
    key = jax.random.key(1)
    for _ in range(30):
        key, context_key, action_key = jax.random.split(key, 3)
        obs, best = one_hot_contexts(context_key, 64)
        logits, values = trainer.model(jnp.asarray(obs))
        actions, log_probs = sample_actions(logits, action_key)
        trainer.train_step({
            "observations": obs, "actions": actions,
            "rewards": (np.asarray(actions) == best).astype(np.float32),
            "values": values, "log_probs": log_probs, "dones": np.ones(64, np.float32),
        })
    after = expected_reward(trainer.model, ALL_CONTEXTS, BEST_ACTION)
    assert before < 0.4
    assert after > 0.8, (before, after)
    # The critic learns the bandit's value too: V(x) -> expected reward under the policy.
    _, values = trainer.model(jnp.asarray(ALL_CONTEXTS))
    assert np.mean(np.asarray(values)) > 0.5


def test_grpo_learns_the_contextual_bandit():
    group = 8
    model = LinearPolicy(N_CONTEXTS, rngs=nnx.Rngs(0))
    config = GRPOConfig(num_generations=group, beta=0.01, entropy_coeff=0.0, policy="categorical")
    trainer = GRPOTrainer(model, optax.adam(0.1), config)
    before = expected_reward(model, ALL_CONTEXTS, BEST_ACTION)
    key = jax.random.key(2)
    for _ in range(30):
        key, context_key, action_key = jax.random.split(key, 3)
        prompts, best = one_hot_contexts(context_key, 8)
        obs, best = np.repeat(prompts, group, axis=0), np.repeat(best, group)  # G generations per prompt
        actions, log_probs = sample_actions(policy_logits(trainer.model, obs), action_key)
        trainer.train_step({
            "observations": obs, "actions": actions, "log_probs": log_probs,
            "rewards": (np.asarray(actions) == best).astype(np.float32),
        })
    after = expected_reward(trainer.model, ALL_CONTEXTS, BEST_ACTION)
    assert before < 0.4
    assert after > 0.8, (before, after)


def test_dpo_learns_preferences_that_generalise_to_new_contexts():
    """Gaussian contexts, best action ``argmax(x @ W)``: DPO on (best, random other)
    pairs ranks the best action first on held-out contexts."""
    dim = 4
    teacher = np.asarray(jax.random.normal(jax.random.key(3), (dim, N_ACTIONS)))
    key_train, key_test, key_other, key_eval_other = jax.random.split(jax.random.key(4), 4)

    def contexts(key, n):
        x = np.asarray(jax.random.normal(key, (n, dim)), np.float32)
        return x, np.argmax(x @ teacher, axis=-1)

    def random_other(key, best):
        shift = np.asarray(jax.random.randint(key, best.shape, 1, N_ACTIONS))
        return (best + shift) % N_ACTIONS  # uniform over the other actions

    train_x, train_best = contexts(key_train, 4096)
    train_other = random_other(key_other, train_best)
    test_x, test_best = contexts(key_test, 1000)
    test_other = random_other(key_eval_other, test_best)

    model = LinearPolicy(dim, rngs=nnx.Rngs(0))
    trainer = DPOTrainer(model, optax.adam(0.1), DPOConfig(beta=0.1, policy="categorical"))

    def preference_accuracy():
        logp = np.asarray(jax.nn.log_softmax(policy_logits(trainer.model, test_x)))
        rows = np.arange(len(test_x))
        return float(np.mean(logp[rows, test_best] > logp[rows, test_other]))

    before_accuracy, before_reward = preference_accuracy(), expected_reward(model, test_x, test_best)
    for _ in range(15):  # epochs over the training pairs
        for start in range(0, 4096, 256):
            part = slice(start, start + 256)
            metrics = trainer.train_step({"observations": train_x[part], "chosen": train_best[part],
                                          "rejected": train_other[part]})
    after_accuracy, after_reward = preference_accuracy(), expected_reward(trainer.model, test_x, test_best)
    assert before_accuracy < 0.7
    assert after_accuracy >= 0.95, (before_accuracy, after_accuracy)
    assert after_reward > before_reward + 0.3, (before_reward, after_reward)
    assert float(metrics["reward_accuracy"]) > 0.9
