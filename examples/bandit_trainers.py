"""All four RL trainers on one contextual bandit, each in a few lines.

Context ``c`` (one of 4, one-hot) has a best arm ``(c + 1) % 4`` paying 1;
every other arm pays 0. Each trainer starts from the same random linear
policy; we print the policy's exact expected reward before and after.

Run: ``python examples/bandit_trainers.py``
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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

ARMS = CONTEXTS = 4


class ActorCritic(nnx.Module):
    """Logits ``(B, ARMS)`` and a value ``(B,)`` from a one-hot context."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.actor = nnx.Linear(CONTEXTS, ARMS, rngs=rngs)
        self.critic = nnx.Linear(CONTEXTS, 1, rngs=rngs)

    def __call__(self, obs):
        return self.actor(obs), self.critic(obs)[:, 0]


def best_arm(context):
    return (context + 1) % ARMS


def expected_reward(policy) -> float:
    """Exact mean over contexts of the probability of the best arm."""
    contexts = jnp.arange(CONTEXTS)
    probs = jax.nn.softmax(policy(jax.nn.one_hot(contexts, CONTEXTS)), axis=-1)
    return float(jnp.mean(probs[contexts, best_arm(contexts)]))


def sample(policy, key, n):
    """Contexts, sampled arms, their log-probs and rewards under ``policy``."""
    k1, k2 = jax.random.split(key)
    contexts = jax.random.randint(k1, (n,), 0, CONTEXTS)
    obs = jax.nn.one_hot(contexts, CONTEXTS)
    logits = policy(obs)
    actions = jax.random.categorical(k2, logits)
    log_probs = jax.nn.log_softmax(logits)[jnp.arange(n), actions]
    rewards = (actions == best_arm(contexts)).astype(jnp.float32)
    return obs, actions, log_probs, rewards


def run(name: str, steps: int = 60, seed: int = 0) -> tuple[float, float]:
    model = ActorCritic(rngs=nnx.Rngs(seed))
    actor = lambda obs: model(obs)[0]  # noqa: E731 - the policy's logits
    tx = optax.adam(0.05)
    if name == "REINFORCE":
        trainer = REINFORCETrainer(PolicyView(model), tx, REINFORCEConfig())
    elif name == "PPO":
        trainer = PPOTrainer(model, tx, PPOConfig(update_epochs=2, num_minibatches=2))
    elif name == "GRPO":
        trainer = GRPOTrainer(PolicyView(model), tx, GRPOConfig(num_generations=8, beta=0.0), policy="categorical")
    else:
        trainer = DPOTrainer(PolicyView(model), tx, DPOConfig(beta=0.5), policy="categorical")
    before = expected_reward(actor)
    key = jax.random.PRNGKey(seed)
    for _ in range(steps):
        key, sub = jax.random.split(key)
        obs, actions, log_probs, rewards = sample(actor, sub, 64)
        if name == "REINFORCE":  # one-step episodes
            batch = {"observations": obs, "actions": actions, "rewards": rewards, "dones": jnp.ones(64)}
        elif name == "PPO":
            batch = {"observations": obs, "actions": actions, "rewards": rewards, "log_probs": log_probs,
                     "values": model(obs)[1], "dones": jnp.ones(64)}
        elif name == "GRPO":  # 8 samples of each of 8 contexts
            obs = jnp.repeat(obs[:8], 8, axis=0)
            actions = jax.random.categorical(sub, actor(obs))
            rewards = (actions == best_arm(jnp.argmax(obs, -1))).astype(jnp.float32)
            batch = {"observations": obs, "actions": actions, "rewards": rewards}
        else:  # preference pairs: the best arm beats a random other arm
            contexts = jnp.argmax(obs, -1)
            other = (best_arm(contexts) + 1 + jax.random.randint(sub, (64,), 0, ARMS - 1)) % ARMS
            batch = {"observations": obs, "chosen": best_arm(contexts), "rejected": other}
        trainer.train_step(batch)
    after = expected_reward(actor)
    print(f"{name:9s}: expected reward {before:.2f} -> {after:.2f}")
    return before, after


class PolicyView(nnx.Module):
    """The actor-critic seen as a policy-only model (REINFORCE, GRPO, DPO need logits only)."""

    def __init__(self, model: ActorCritic):
        self.model = model

    def __call__(self, obs):
        return self.model(obs)[0]


def main() -> dict[str, tuple[float, float]]:
    return {name: run(name) for name in ("REINFORCE", "PPO", "GRPO", "DPO")}


if __name__ == "__main__":
    main()
