"""Every code snippet of the two seed documents, with only the import prefix changed.

The seed documents (the Artifex REINFORCE trainer page and RL training guide)
are kept verbatim in ``tests/seed_docs/`` (their web copy lost the
indentation). Each snippet below is the seed's text, re-indented; a test
checks that it still occurs in the seed document once whitespace is removed,
so the snippets cannot drift from the seeds. :func:`ours` changes only the
import prefix (``artifex.generative_models.training`` -> ``artifex_rl``).

The seeds leave models, data and helper functions undefined; each test fills
them in (the ``fill`` dicts) and asserts what the seed implies: the metrics it
prints, a scalar loss it can differentiate, rewards of one value per sample.
Where the seed cannot work as written, the test asserts the clear error that
``docs/seed_to_ours.md`` documents, and runs the smallest working change.
The model-specific trainers come from ``artifex_rl.trainers`` as the seeds
import them.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

SEED_DOCS = Path(__file__).parent / "seed_docs"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "seed_to_ours.md"

PREFIXES = [  # longest first
    ("artifex.generative_models.training.rl.utils", "artifex_rl.rl.utils"),
    ("artifex.generative_models.training.callbacks", "artifex_rl.callbacks"),
    ("artifex.generative_models.training.trainers", "artifex_rl.trainers"),
    ("artifex.generative_models.training", "artifex_rl"),
]


def ours(snippet: str) -> str:
    """The seed snippet with only the import prefix changed."""
    for seed, here in PREFIXES:
        snippet = snippet.replace(seed, here)
    return snippet


def run(snippet: str, **fill):
    """Execute the (prefix-changed) snippet in a fresh namespace holding ``fill``; return the namespace."""
    namespace = {"__name__": "__seed__", **fill}
    exec(compile(ours(snippet), "<seed snippet>", "exec"), namespace)
    return namespace


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


# --------------------------------------------------------------------------- #
# The seeds' snippets, verbatim (re-indented)
# --------------------------------------------------------------------------- #
S: dict[str, str] = {}

S["reinforce_quick_start"] = '''
from artifex.generative_models.training import (
REINFORCEConfig,
REINFORCETrainer,
)
from flax import nnx
import optax
# Create model and optimizer
model = PolicyModel(rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)
# Configure REINFORCE
config = REINFORCEConfig(
    gamma=0.99,
    normalize_returns=True,
    entropy_coeff=0.01,
)
trainer = REINFORCETrainer(model, optimizer, config)
# Training step
batch = {
    "observations": observations,
    "actions": actions,
    "rewards": rewards,
}
metrics = trainer.train_step(batch)
'''

S["guide_reinforce_config"] = '''
from artifex.generative_models.training import REINFORCEConfig, REINFORCETrainer
config = REINFORCEConfig(
    gamma=0.99, # Discount factor for returns
    normalize_returns=True, # Normalize returns for stability
    entropy_coeff=0.01, # Entropy bonus for exploration
)
'''

S["guide_reinforce_usage"] = '''
from flax import nnx
import optax
from artifex.generative_models.training import (
REINFORCEConfig,
REINFORCETrainer,
)
# Setup model and optimizer
model = YourPolicyModel(rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)
# Create trainer
config = REINFORCEConfig(gamma=0.99, entropy_coeff=0.01)
trainer = REINFORCETrainer(model, optimizer, config)
# Training step
batch = {
    "observations": observations, # State observations
    "actions": actions, # Actions taken
    "rewards": rewards, # Rewards received
}
metrics = trainer.train_step(batch)
print(f"Policy loss: {metrics['policy_loss']:.4f}")
'''

S["guide_ppo_config"] = '''
from artifex.generative_models.training import PPOConfig, PPOTrainer
config = PPOConfig(
    gamma=0.99, # Discount factor
    gae_lambda=0.95, # GAE lambda for advantage estimation
    clip_param=0.2, # PPO clipping parameter
    vf_coeff=0.5, # Value function loss coefficient
    entropy_coeff=0.01, # Entropy bonus coefficient
    max_grad_norm=0.5, # Gradient clipping norm
)
'''

S["guide_ppo_training"] = '''
from flax import nnx
import optax
from artifex.generative_models.training import PPOConfig, PPOTrainer
# Actor-critic model with separate heads
model = ActorCriticModel(rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(3e-4), wrt=nnx.Param)
config = PPOConfig(
    gamma=0.99,
    gae_lambda=0.95,
    clip_param=0.2,
    vf_coeff=0.5,
    entropy_coeff=0.01,
)
trainer = PPOTrainer(model, optimizer, config)
# Collect trajectory
trajectory = {
    "observations": observations,
    "actions": actions,
    "rewards": rewards,
    "values": values, # Value estimates V(s)
    "log_probs": old_log_probs, # Log probs from old policy
    "dones": dones, # Episode termination flags
}
# Train on trajectory
metrics = trainer.train_step(trajectory)
print(f"Policy loss: {metrics['policy_loss']:.4f}")
print(f"Value loss: {metrics['value_loss']:.4f}")
print(f"Entropy: {metrics['entropy']:.4f}")
'''

S["guide_grpo_config"] = '''
from artifex.generative_models.training import GRPOConfig, GRPOTrainer
config = GRPOConfig(
    num_generations=4, # Generations per prompt (group size)
    clip_param=0.2, # PPO-style clipping
    beta=0.01, # KL penalty coefficient
    entropy_coeff=0.01, # Entropy bonus
    gamma=0.99, # Discount factor
)
'''

S["guide_grpo_training"] = '''
from flax import nnx
import optax
from artifex.generative_models.training import GRPOConfig, GRPOTrainer
# Policy model (no value head needed!)
model = PolicyModel(rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)
config = GRPOConfig(
    num_generations=4, # Generate 4 samples per prompt
    clip_param=0.2,
    beta=0.01,
)
trainer = GRPOTrainer(model, optimizer, config)
# Batch with grouped generations
# If num_prompts=8 and num_generations=4, batch_size=32
batch = {
    "observations": observations, # Shape: (batch_size, ...)
    "actions": actions, # Shape: (batch_size, ...)
    "rewards": rewards, # Shape: (batch_size,)
    "log_probs": old_log_probs, # Shape: (batch_size,)
    "group_size": 4, # Optional, defaults to config
}
metrics = trainer.train_step(batch)
print(f"Policy loss: {metrics['policy_loss']:.4f}")
print(f"Approx KL: {metrics['approx_kl']:.4f}")
'''

S["guide_grpo_kl"] = '''
# With reference model for KL penalty
batch = {
    "observations": observations,
    "actions": actions,
    "rewards": rewards,
    "log_probs": old_log_probs,
    "ref_log_probs": ref_log_probs, # From frozen reference model
}
# KL penalty is automatically applied when ref_log_probs is provided
metrics = trainer.train_step(batch)
print(f"KL penalty: {metrics.get('kl_penalty', 0):.4f}")
'''

S["guide_dpo_config"] = '''
from artifex.generative_models.training import DPOConfig, DPOTrainer
config = DPOConfig(
    beta=0.1, # Reward scaling temperature
    label_smoothing=0.0, # Smoothing for preference labels
    reference_free=False, # Enable SimPO mode
)
'''

S["guide_dpo_training"] = '''
from flax import nnx
import optax
from artifex.generative_models.training import DPOConfig, DPOTrainer
model = PolicyModel(rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(1e-5), wrt=nnx.Param)
config = DPOConfig(beta=0.1)
trainer = DPOTrainer(model, optimizer, config)
# Preference pairs: chosen (preferred) vs rejected
batch = {
    "chosen_log_probs": chosen_log_probs, # Log probs for preferred
    "rejected_log_probs": rejected_log_probs, # Log probs for rejected
    "ref_chosen_log_probs": ref_chosen, # Reference model log probs
    "ref_rejected_log_probs": ref_rejected,
}
metrics = trainer.train_step(batch)
print(f"DPO loss: {metrics['dpo_loss']:.4f}")
print(f"Reward accuracy: {metrics['reward_accuracy']:.2%}")
'''

S["guide_simpo"] = '''
config = DPOConfig(
    beta=0.1,
    reference_free=True, # Enable SimPO mode
)
trainer = DPOTrainer(model, optimizer, config)
# No reference log probs needed
batch = {
    "chosen_log_probs": chosen_log_probs,
    "rejected_log_probs": rejected_log_probs,
}
metrics = trainer.train_step(batch)
'''

S["guide_reward_imports"] = '''
from artifex.generative_models.training import (
ConstantReward,
CompositeReward,
ThresholdReward,
ScaledReward,
ClippedReward,
)
'''

S["guide_composite_reward"] = '''
reward_fn = CompositeReward(
    reward_fns=[aesthetic_reward, clip_reward],
    weights=[0.3, 0.7], # 30% aesthetic, 70% CLIP
)
'''

S["guide_threshold_reward"] = '''
# Reward = 1.0 if base_reward > 0.5 else 0.0
reward_fn = ThresholdReward(
    reward_fn=base_reward,
    threshold=0.5,
    above_value=1.0,
    below_value=0.0,
)
'''

S["guide_custom_rewards"] = '''
from typing import Protocol
import jax
import jax.numpy as jnp
class RewardFunction(Protocol):
    """Protocol for reward function implementations."""
    def __call__(
        self,
        samples: jax.Array,
        conditions: jax.Array | None = None,
        **kwargs,
    ) -> jax.Array:
        """Compute rewards for generated samples.
        Args:
        samples: Generated samples to evaluate.
        conditions: Optional conditioning information.
        Returns:
        Reward values with shape (batch_size,).
        """
        ...
# Example: CLIP-based reward
class CLIPReward:
    def __init__(self, clip_model, target_text):
        self.clip_model = clip_model
        self.target_text = target_text
        self.target_embedding = clip_model.encode_text(target_text)
    def __call__(self, samples, conditions=None, **kwargs):
        image_embeddings = self.clip_model.encode_image(samples)
        # Cosine similarity as reward
        similarity = jnp.sum(
            image_embeddings * self.target_embedding,
            axis=-1,
        )
        return similarity
# Example: Multi-objective reward with learnable weights
class MultiObjectiveReward:
    """Complex reward combining multiple objectives with adaptive weighting."""
    def __init__(
        self,
        clip_model,
        aesthetic_model,
        safety_classifier,
        target_text: str,
        clip_weight: float = 0.4,
        aesthetic_weight: float = 0.3,
        safety_weight: float = 0.3,
    ):
        self.clip_model = clip_model
        self.aesthetic_model = aesthetic_model
        self.safety_classifier = safety_classifier
        self.target_embedding = clip_model.encode_text(target_text)
        # Weights can be tuned during training
        self.weights = {
            "clip": clip_weight,
            "aesthetic": aesthetic_weight,
            "safety": safety_weight,
        }
    def __call__(self, samples, conditions=None, **kwargs):
        batch_size = samples.shape[0]
        # CLIP alignment score (cosine similarity)
        image_emb = self.clip_model.encode_image(samples)
        clip_score = jnp.sum(image_emb * self.target_embedding, axis=-1)
        # Aesthetic quality score (normalized to [0, 1])
        aesthetic_score = self.aesthetic_model(samples)
        aesthetic_score = jax.nn.sigmoid(aesthetic_score)
        # Safety score (1.0 = safe, 0.0 = unsafe)
        safety_logits = self.safety_classifier(samples)
        safety_score = jax.nn.softmax(safety_logits, axis=-1)[:, 0] # P(safe)
        # Combine with penalty for unsafe content
        combined_reward = (
            self.weights["clip"] * clip_score +
            self.weights["aesthetic"] * aesthetic_score +
            self.weights["safety"] * safety_score
        )
        # Apply safety penalty: zero reward for unsafe samples
        safety_mask = safety_score > 0.5
        combined_reward = jnp.where(safety_mask, combined_reward, -1.0)
        return combined_reward
# Example: Sequence-level reward for text generation
class SequenceReward:
    """Reward function for autoregressive text models."""
    def __init__(self, reward_model, tokenizer):
        self.reward_model = reward_model
        self.tokenizer = tokenizer
    def __call__(self, samples, conditions=None, **kwargs):
        # samples: token IDs of shape (batch, seq_len)
        # Compute reward at sequence level
        rewards = self.reward_model(samples)
        # Apply length penalty to avoid reward hacking
        lengths = jnp.sum(samples != self.tokenizer.pad_id, axis=-1)
        length_penalty = jnp.log(lengths + 1) / jnp.log(100) # Normalize
        return rewards - 0.1 * length_penalty
'''

S["guide_utils_imports"] = '''
from artifex.generative_models.training.rl.utils import (
compute_discounted_returns,
compute_gae_advantages,
normalize_advantages,
compute_policy_entropy,
compute_kl_divergence,
compute_clipped_surrogate_loss,
)
'''

S["guide_discounted_returns"] = '''
# Compute G_t = r_t + gamma * r_{t+1} + gamma^2 * r_{t+2} + ...
returns = compute_discounted_returns(rewards, gamma=0.99)
'''

S["guide_gae"] = '''
# GAE with bias-variance trade-off
advantages = compute_gae_advantages(
    rewards=rewards,
    values=values, # V(s) estimates including V(s_T+1)
    dones=dones, # Episode termination flags
    gamma=0.99,
    gae_lambda=0.95,
)
'''

S["guide_clipped_surrogate"] = '''
# PPO clipped objective
loss = compute_clipped_surrogate_loss(
    log_probs=current_log_probs,
    old_log_probs=old_log_probs,
    advantages=advantages,
    clip_param=0.2,
)
'''

S["guide_diffusion_grpo"] = '''
from artifex.generative_models.training import GRPOConfig, GRPOTrainer
from artifex.generative_models.training.trainers import DiffusionTrainer
# Standard diffusion trainer for pre-training
diffusion_trainer = DiffusionTrainer(model, optimizer, diffusion_config)
# Fine-tune with GRPO
grpo_config = GRPOConfig(num_generations=4, beta=0.01)
grpo_trainer = GRPOTrainer(model, optimizer, grpo_config)
# Generate samples and compute rewards
for batch in dataloader:
    # Generate multiple samples per condition
    samples = generate_samples(model, batch["conditions"], num_samples=4)
    rewards = reward_fn(samples, batch["conditions"])
    # GRPO training step
    rl_batch = {
        "observations": batch["conditions"],
        "actions": samples,
        "rewards": rewards,
        "log_probs": compute_log_probs(model, samples, batch["conditions"]),
    }
    metrics = grpo_trainer.train_step(rl_batch)
'''

S["guide_vae_ppo"] = '''
from artifex.generative_models.training import PPOConfig, PPOTrainer
# Use encoder as policy, decoder as environment
ppo_config = PPOConfig(gamma=0.99, gae_lambda=0.95)
ppo_trainer = PPOTrainer(encoder, optimizer, ppo_config)
# Train encoder to produce latents that decode well
for batch in dataloader:
    # Encoder produces latent "actions"
    latents, log_probs = encoder(batch["images"], return_log_prob=True)
    # Decoder reconstructs, computing "rewards"
    reconstructions = decoder(latents)
    rewards = compute_reconstruction_reward(batch["images"], reconstructions)
    trajectory = {
        "observations": batch["images"],
        "actions": latents,
        "rewards": rewards,
        "values": value_estimates,
        "log_probs": log_probs,
        "dones": jnp.zeros(batch_size),
    }
    metrics = ppo_trainer.train_step(trajectory)
'''

S["guide_gan_reinforce"] = '''
from artifex.generative_models.training import REINFORCEConfig, REINFORCETrainer
reinforce_config = REINFORCEConfig(entropy_coeff=0.01)
reinforce_trainer = REINFORCETrainer(generator, optimizer, reinforce_config)
# Use discriminator output as reward
for batch in dataloader:
    # Generate samples
    generated = generator(batch["noise"])
    # Discriminator provides reward signal
    rewards = discriminator(generated) # Higher = more realistic
    rl_batch = {
        "observations": batch["noise"],
        "actions": generated,
        "rewards": rewards,
    }
    metrics = reinforce_trainer.train_step(rl_batch)
'''

S["guide_api_imports"] = '''
from artifex.generative_models.training import (
# Configurations
REINFORCEConfig,
PPOConfig,
GRPOConfig,
DPOConfig,
# Trainers
REINFORCETrainer,
PPOTrainer,
GRPOTrainer,
DPOTrainer,
# Reward functions
RewardFunction,
ConstantReward,
CompositeReward,
ThresholdReward,
ScaledReward,
ClippedReward,
)
'''

S["guide_callbacks"] = '''
from artifex.generative_models.training import GRPOTrainer, GRPOConfig
from artifex.generative_models.training.callbacks import (
WandbLoggerCallback,
WandbLoggerConfig,
ModelCheckpoint,
CheckpointConfig,
JAXProfiler,
ProfilingConfig,
ProgressBarCallback,
)
# Configure RL trainer
grpo_config = GRPOConfig(
    num_generations=4,
    clip_param=0.2,
    beta=0.01,
)
trainer = GRPOTrainer(model, optimizer, grpo_config)
# Setup callbacks for RL training
callbacks = [
    # Log RL-specific metrics (rewards, advantages, KL divergence)
    WandbLoggerCallback(WandbLoggerConfig(
        project="rl-finetuning",
        name="grpo-experiment",
        config={
            "algorithm": "GRPO",
            "num_generations": 4,
            "beta": 0.01,
        },
        log_every_n_steps=10,
    )),
    # Save best model based on mean reward
    ModelCheckpoint(CheckpointConfig(
        dirpath="checkpoints/grpo",
        monitor="mean_reward",
        mode="max", # Higher reward is better
        save_top_k=1, # Keep only the best checkpoint
    )),
    # Profile RL training (useful for debugging generation bottlenecks)
    JAXProfiler(ProfilingConfig(
        log_dir="logs/rl_profiles",
        start_step=50,
        end_step=60,
    )),
    # Progress bar with RL metrics
    ProgressBarCallback(),
]
# Training loop with callbacks
for callback in callbacks:
    callback.on_train_begin(trainer)
for step, batch in enumerate(dataloader):
    # Generate samples and compute rewards
    metrics = trainer.train_step(batch, reward_fn, key)
    # Log metrics via callbacks
    for callback in callbacks:
        callback.on_train_batch_end(trainer, metrics, step)
for callback in callbacks:
    callback.on_train_end(trainer)
'''


@pytest.mark.parametrize("name", sorted(S))
def test_snippet_is_the_seeds_text(name):
    """Each snippet occurs in a seed document (whitespace aside): nothing was edited but the indentation."""
    seeds = _squash("".join(p.read_text() for p in SEED_DOCS.glob("*.txt")))
    assert _squash(S[name]) in seeds, f"{name} is not verbatim seed text"


def test_ours_changes_only_the_import_prefix():
    for name, snippet in S.items():
        changed = ours(snippet)
        assert "artifex.generative_models" not in changed, name
        assert _squash(re.sub(r"artifex_rl(\.\w+)*", "", changed)) == _squash(
            re.sub(r"artifex\.generative_models\.training(\.\w+)*", "", snippet)
        ), name


# --------------------------------------------------------------------------- #
# What the seeds leave undefined
# --------------------------------------------------------------------------- #
class PolicyModel(nnx.Module):
    """``(N, 4) -> logits (N, 2)``: the seeds' ``PolicyModel`` / ``YourPolicyModel``."""

    def __init__(self, rngs: nnx.Rngs):
        self.l1, self.l2 = nnx.Linear(4, 32, rngs=rngs), nnx.Linear(32, 2, rngs=rngs)

    def __call__(self, obs):
        return self.l2(jax.nn.tanh(self.l1(obs)))


class ActorCriticModel(nnx.Module):
    """``(N, 4) -> (logits (N, 2), value (N,))``: "actor-critic model with separate heads"."""

    def __init__(self, rngs: nnx.Rngs):
        self.torso = nnx.Linear(4, 32, rngs=rngs)
        self.pi, self.v = nnx.Linear(32, 2, rngs=rngs), nnx.Linear(32, 1, rngs=rngs)

    def __call__(self, obs):
        h = jax.nn.tanh(self.torso(obs))
        return self.pi(h), self.v(h)[..., 0]


def trajectory(t: int = 64, seed: int = 0) -> dict:
    """A T-step trajectory of 4-feature observations with episodes of 16 steps."""
    rng = np.random.default_rng(seed)
    observations = rng.normal(size=(t, 4)).astype(np.float32)
    actions = rng.integers(0, 2, size=t)
    return {
        "observations": observations,
        "actions": actions,
        "rewards": (actions == (observations[:, 0] > 0)).astype(np.float32),
        "dones": (np.arange(t) % 16 == 15).astype(np.float32),
        "values": rng.normal(size=t).astype(np.float32),
        "old_log_probs": np.full(t, np.log(0.5), np.float32),
        "ref_log_probs": np.full(t, np.log(0.5), np.float32) + 0.1 * rng.normal(size=t).astype(np.float32),
    }


# --------------------------------------------------------------------------- #
# REINFORCE
# --------------------------------------------------------------------------- #
def test_reinforce_quick_start_and_basic_usage(capsys):
    data = trajectory()
    fill = {k: data[k] for k in ("observations", "actions", "rewards")}
    quick = run(S["reinforce_quick_start"], PolicyModel=PolicyModel, **fill)
    assert {"loss", "policy_loss", "entropy", "mean_reward", "reward_std"} <= set(quick["metrics"])
    # no dones: the 64 steps are one episode, discounted from the end (the seeds' batch as written)
    assert float(quick["metrics"]["mean_reward"]) == pytest.approx(float(np.mean(data["rewards"])))
    config = run(S["guide_reinforce_config"])["config"]
    assert (config.gamma, config.normalize_returns, config.entropy_coeff) == (0.99, True, 0.01)

    usage = run(S["guide_reinforce_usage"], YourPolicyModel=PolicyModel, **fill)
    assert re.search(r"^Policy loss: -?\d+\.\d{4}$", capsys.readouterr().out, re.M)
    assert np.isfinite(float(usage["metrics"]["policy_loss"]))


def test_reinforce_api_reference():
    """The seed's API reference: config signature, constructor, compute_returns, normalize_returns, train_step."""
    from artifex_rl.rl.configs import REINFORCEConfig
    from artifex_rl.rl.reinforce import REINFORCETrainer

    fields = [f for f in dataclasses.fields(REINFORCEConfig) if not f.kw_only][:3]
    assert [(f.name, f.default) for f in fields] == [("gamma", 0.99), ("normalize_returns", True), ("entropy_coeff", 0.01)]
    params = list(inspect.signature(REINFORCETrainer).parameters.values())
    assert [p.name for p in params[:3]] == ["model", "optimizer", "config"] and params[2].default is None

    model = PolicyModel(rngs=nnx.Rngs(0))
    trainer = REINFORCETrainer(model, nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param), REINFORCEConfig(gamma=0.5))
    rewards = np.random.default_rng(1).random((3, 6)).astype(np.float32)
    dones = np.zeros((3, 6), np.float32)
    dones[:, 2] = 1.0
    expected = np.zeros_like(rewards)  # numpy, backwards, reset at dones
    for t in reversed(range(6)):
        following = expected[:, t + 1] if t + 1 < 6 else 0.0
        expected[:, t] = rewards[:, t] + 0.5 * (1 - dones[:, t]) * following
    np.testing.assert_allclose(trainer.compute_returns(rewards, dones), expected, rtol=1e-6)
    no_dones = [sum(rewards[0][k] * 0.5 ** (k - t) for k in range(t, 6)) for t in range(6)]
    np.testing.assert_allclose(trainer.compute_returns(rewards[0]), no_dones, rtol=1e-6)
    mask = np.ones((3, 6), np.float32)
    mask[0, :3] = 0.0
    normalized = np.asarray(trainer.normalize_returns(expected, mask))
    valid = expected[mask > 0]
    np.testing.assert_allclose(normalized[mask > 0], (valid - valid.mean()) / (valid.std() + 1e-8), rtol=1e-5, atol=1e-6)
    assert np.all(normalized[mask == 0] == 0.0)
    # train_step(trajectory) with the REINFORCE page's "states" key: tests/test_rl_trainers.py (states_key cases)


# --------------------------------------------------------------------------- #
# PPO
# --------------------------------------------------------------------------- #
def test_ppo_config_and_training(capsys):
    config = run(S["guide_ppo_config"])["config"]
    assert (config.gamma, config.gae_lambda, config.clip_param, config.vf_coeff, config.entropy_coeff,
            config.max_grad_norm) == (0.99, 0.95, 0.2, 0.5, 0.01, 0.5)  # fmt: skip
    data = trajectory()
    ns = run(
        S["guide_ppo_training"], ActorCriticModel=ActorCriticModel, old_log_probs=data["old_log_probs"],
        **{k: data[k] for k in ("observations", "actions", "rewards", "values", "dones")},
    )
    out = capsys.readouterr().out
    for label in ("Policy loss", "Value loss", "Entropy"):
        assert re.search(rf"^{label}: -?\d+\.\d{{4}}$", out, re.M), out
    # the seed's PPO metrics table
    assert {"policy_loss", "value_loss", "mean_reward", "advantage_mean", "kl_divergence"} <= set(ns["metrics"])


# --------------------------------------------------------------------------- #
# GRPO
# --------------------------------------------------------------------------- #
def test_grpo_config_training_and_kl_penalty(capsys):
    config = run(S["guide_grpo_config"])["config"]
    assert (config.num_generations, config.clip_param, config.beta, config.entropy_coeff, config.gamma) == (
        4, 0.2, 0.01, 0.01, 0.99
    )
    data = trajectory(32)  # 8 prompts x 4 generations; per-sample observations
    fill = {k: data[k] for k in ("observations", "actions", "rewards")}
    ns = run(S["guide_grpo_training"], PolicyModel=PolicyModel, old_log_probs=data["old_log_probs"], **fill)
    assert re.search(r"^Approx KL: -?\d+\.\d{4}$", capsys.readouterr().out, re.M)
    ns = run(S["guide_grpo_kl"], trainer=ns["trainer"], old_log_probs=data["old_log_probs"],
             ref_log_probs=data["ref_log_probs"], **fill)  # fmt: skip
    # the KL to the batch's reference log-probs is applied: kl_penalty = beta * k3 estimate
    d = data["ref_log_probs"] - np.asarray(jax.nn.log_softmax(ns["trainer"].model(data["observations"])))[
        np.arange(32), data["actions"]
    ]
    # the parameters moved by one step since the log-probs were scored; the estimate is close
    assert float(ns["metrics"]["kl_penalty"]) == pytest.approx(0.01 * np.mean(np.expm1(d) - d), rel=0.2, abs=1e-6)
    assert {"loss", "mean_reward", "group_advantage_std", "kl_penalty", "policy_loss", "approx_kl"} <= set(ns["metrics"])
    assert re.search(r"^KL penalty: \d+\.\d{4}$", capsys.readouterr().out, re.M)


# --------------------------------------------------------------------------- #
# DPO
# --------------------------------------------------------------------------- #
def test_dpo_config_and_the_log_prob_batch_error():
    config = run(S["guide_dpo_config"])["config"]
    assert (config.beta, config.label_smoothing, config.reference_free) == (0.1, 0.0, False)
    lp = np.log(np.full(8, 0.3, np.float32))
    fill = dict(PolicyModel=PolicyModel, chosen_log_probs=lp, rejected_log_probs=lp - 1.0, ref_chosen=lp, ref_rejected=lp)
    # documented (seed_to_ours.md, DPO): precomputed policy log-probs carry no gradient to the model
    with pytest.raises(ValueError, match=r"precomputed policy log-probs .* Pass the sequences instead"):
        run(S["guide_dpo_training"], **fill)
    ns = run(S["guide_dpo_config"])
    model = PolicyModel(rngs=nnx.Rngs(0))
    with warnings.catch_warnings(record=True) as caught:  # SimPO with beta=0.1 < 1 warns (paper: 2-10)
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=r"precomputed policy log-probs"):
            run(S["guide_simpo"], DPOConfig=ns["DPOConfig"], DPOTrainer=ns["DPOTrainer"], model=model,
                optimizer=optax.adam(1e-5), chosen_log_probs=lp, rejected_log_probs=lp - 1.0)  # fmt: skip
    assert any("SimPO" in str(w.message) for w in caught)


def test_dpo_the_working_form_reports_the_seeds_metrics():
    """What seed_to_ours.md says to pass instead: the sequences (here single categorical actions)."""
    from artifex_rl import DPOConfig, DPOTrainer

    model = PolicyModel(rngs=nnx.Rngs(0))
    trainer = DPOTrainer(model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param), DPOConfig(beta=0.1))
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    metrics = trainer.train_step({"observations": obs, "chosen": np.ones(16, np.int32), "rejected": np.zeros(16, np.int32)})
    assert {"dpo_loss", "reward_accuracy", "loss", "chosen_reward", "rejected_reward", "reward_margin"} <= set(metrics)


# --------------------------------------------------------------------------- #
# Rewards
# --------------------------------------------------------------------------- #
def test_reward_snippets():
    ns = run(S["guide_reward_imports"])
    samples = jnp.linspace(0.0, 1.0, 8)[:, None] * jnp.ones((8, 3))
    aesthetic_reward = lambda s, c=None, **kw: jnp.mean(s, axis=-1)  # noqa: E731
    clip_reward = lambda s, c=None, **kw: 1.0 - jnp.mean(s, axis=-1)  # noqa: E731
    composite = run(S["guide_composite_reward"], CompositeReward=ns["CompositeReward"],
                    aesthetic_reward=aesthetic_reward, clip_reward=clip_reward)["reward_fn"]  # fmt: skip
    np.testing.assert_allclose(composite(samples), 0.3 * samples[:, 0] + 0.7 * (1 - samples[:, 0]), rtol=1e-6)
    threshold = run(S["guide_threshold_reward"], ThresholdReward=ns["ThresholdReward"], base_reward=aesthetic_reward)
    np.testing.assert_array_equal(threshold["reward_fn"](samples), (samples[:, 0] > 0.5).astype(np.float32))
    # the seed names these with headings only; the natural calls work
    assert np.all(np.asarray(ns["ConstantReward"](2.0)(samples)) == 2.0)
    np.testing.assert_allclose(ns["ScaledReward"](aesthetic_reward, 2.0)(samples), 2 * samples[:, 0], rtol=1e-6)
    np.testing.assert_allclose(ns["ClippedReward"](aesthetic_reward, 0.2, 0.6)(samples), np.clip(samples[:, 0], 0.2, 0.6), rtol=1e-6)


class _Clip:
    def encode_text(self, text):
        return jnp.ones(3) / jnp.sqrt(3.0)

    def encode_image(self, samples):
        return samples / jnp.linalg.norm(samples, axis=-1, keepdims=True)


def test_custom_reward_classes_follow_the_protocol():
    import artifex_rl

    ns = run(S["guide_custom_rewards"])
    samples = jnp.abs(jax.random.normal(jax.random.key(0), (6, 3))) + 0.1
    clip = ns["CLIPReward"](_Clip(), "a cat")
    multi = ns["MultiObjectiveReward"](_Clip(), lambda s: jnp.sum(s, -1), lambda s: jnp.stack([s[:, 0], s[:, 1]], -1), "a cat")
    tokens = jnp.array([[3, 4, 0, 0], [5, 0, 0, 0]])
    sequence = ns["SequenceReward"](lambda s: jnp.ones(s.shape[0]), type("Tok", (), {"pad_id": 0})())
    for reward, x in ((clip, samples), (multi, samples), (sequence, tokens)):
        assert isinstance(reward, artifex_rl.RewardFunction)
        assert reward(x).shape == (x.shape[0],)
    np.testing.assert_allclose(sequence(tokens), 1 - 0.1 * np.log([3.0, 2.0]) / np.log(100), rtol=1e-6)


# --------------------------------------------------------------------------- #
# Utilities
# --------------------------------------------------------------------------- #
def test_utility_snippets():
    ns = run(S["guide_utils_imports"])
    rng = np.random.default_rng(3)
    rewards = rng.random(10).astype(np.float32)
    dones = np.zeros(10, np.float32)
    dones[4] = 1.0
    values = rng.normal(size=11).astype(np.float32)  # "V(s) estimates including V(s_T+1)"

    returns = run(S["guide_discounted_returns"], rewards=rewards, **ns)["returns"]
    np.testing.assert_allclose(returns, [sum(rewards[k] * 0.99 ** (k - t) for k in range(t, 10)) for t in range(10)], rtol=1e-5)

    advantages = run(S["guide_gae"], rewards=rewards, values=values, dones=dones, **ns)["advantages"]
    expected, running = np.zeros(10), 0.0
    for t in reversed(range(10)):
        delta = rewards[t] + 0.99 * values[t + 1] * (1 - dones[t]) - values[t]
        running = delta + 0.99 * 0.95 * (1 - dones[t]) * running
        expected[t] = running
    np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-6)

    # `loss = compute_clipped_surrogate_loss(...)` is the scalar loss, as the seed assigns it
    old = np.log(rng.uniform(0.2, 0.8, 10)).astype(np.float32)
    current = (old + 0.3 * rng.normal(size=10)).astype(np.float32)
    fill = dict(current_log_probs=current, old_log_probs=old, advantages=np.asarray(advantages, np.float32), **ns)
    loss = run(S["guide_clipped_surrogate"], **fill)["loss"]
    ratio = np.exp(current.astype(np.float64) - old)
    adv = np.asarray(advantages, np.float64)
    assert loss.shape == ()
    np.testing.assert_allclose(loss, -np.mean(np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv)), rtol=1e-5)
    assert np.isfinite(float(loss + 0.5 * 1.0))  # composes with a value loss
    grad = jax.grad(lambda lp: run(S["guide_clipped_surrogate"], **{**fill, "current_log_probs": lp})["loss"])(current)
    assert grad.shape == (10,) and np.all(np.isfinite(grad))

    # the headings without code: normalize_advantages, compute_policy_entropy, compute_kl_divergence
    normalized = np.asarray(ns["normalize_advantages"](adv))
    np.testing.assert_allclose(normalized, (adv - adv.mean()) / (adv.std() + 1e-8), rtol=1e-5, atol=1e-6)
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(ns["compute_policy_entropy"](logits), np.mean(-np.sum(p * np.log(p), -1)), rtol=1e-5)
    d = old - current
    np.testing.assert_allclose(ns["compute_kl_divergence"](current, old), np.mean(np.expm1(d) - d), rtol=1e-4)


# --------------------------------------------------------------------------- #
# Integration with model-specific trainers
# --------------------------------------------------------------------------- #
class ConditionalGaussian(nnx.Module):
    """A toy conditional generator: conditions (N, 16) -> (mean, log_std) of a sample (N, 16)."""

    def __init__(self, rngs: nnx.Rngs):
        self.net = nnx.Linear(16, 16, rngs=rngs)
        self.log_std = nnx.Param(jnp.zeros(16))

    def __call__(self, conditions):
        mean = self.net(conditions)
        return mean, jnp.broadcast_to(self.log_std[...], mean.shape)


def _diffusion_fill():
    from artifex_rl.distributions import GaussianPolicy

    model = ConditionalGaussian(nnx.Rngs(0))
    head = GaussianPolicy()

    def generate_samples(model, conditions, num_samples):  # (8, 16) -> (32, 16): 4 per condition
        repeated = jnp.repeat(conditions, num_samples, axis=0)
        return head.sample(model(repeated), jax.random.key(0))

    def compute_log_probs(model, samples, conditions):
        return head.log_prob(model(jnp.repeat(conditions, samples.shape[0] // conditions.shape[0], axis=0)), samples)

    conditions = jax.random.normal(jax.random.key(1), (8, 16))
    return dict(
        model=model, optimizer=nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param), diffusion_config=None,
        dataloader=[{"conditions": conditions}], generate_samples=generate_samples, compute_log_probs=compute_log_probs,
        reward_fn=lambda samples, conditions=None: -jnp.mean(jnp.square(samples), axis=-1),
    )  # fmt: skip


GRPO_ROWS_ERROR = r"batch\['observations'\] has shape \(8, 16\), expected leading dims \(32,\).*repeat each prompt"


def test_diffusion_grpo_snippet_as_written():
    """``from artifex_rl.trainers import DiffusionTrainer`` works; then the seed's 8 condition rows
    for 32 samples is the documented error."""
    with pytest.raises(ValueError, match=GRPO_ROWS_ERROR):
        run(S["guide_diffusion_grpo"], **_diffusion_fill())


def test_diffusion_grpo_loop_error_and_fix():
    """The GRPO half of the snippet (no DiffusionTrainer needed): the seed's rows, then repeated conditions."""
    grpo_half = S["guide_diffusion_grpo"].split("# Fine-tune with GRPO", 1)[1]
    grpo_half = "from artifex.generative_models.training import GRPOConfig, GRPOTrainer\n" + grpo_half
    fill = _diffusion_fill()
    with pytest.raises(ValueError, match=GRPO_ROWS_ERROR):
        run(grpo_half, **fill)
    fixed = grpo_half.replace('"observations": batch["conditions"]', '"observations": jnp.repeat(batch["conditions"], 4, axis=0)')
    ns = run(fixed, jnp=jnp, **fill)
    head = ns["grpo_trainer"].resolve_policy(ns["rl_batch"]["actions"])
    assert type(head).__name__ == "GaussianPolicy"  # policy="auto": float samples are Gaussian actions
    assert np.isfinite(float(ns["metrics"]["loss"]))


class Encoder(nnx.Module):
    """images (N, 16) -> ((mean, log_std) of latents (N, 4), value (N,)); ``return_log_prob=True`` samples."""

    def __init__(self, rngs: nnx.Rngs):
        self.mean, self.value = nnx.Linear(16, 4, rngs=rngs), nnx.Linear(16, 1, rngs=rngs)
        self.log_std = nnx.Param(jnp.full(4, -1.0))

    def __call__(self, images, return_log_prob=False):
        mean = self.mean(images)
        log_std = jnp.broadcast_to(self.log_std[...], mean.shape)
        if not return_log_prob:
            return (mean, log_std), self.value(images)[:, 0]
        from artifex_rl.distributions import GaussianPolicy

        latents = GaussianPolicy().sample((mean, log_std), jax.random.key(0))
        return latents, GaussianPolicy().log_prob((mean, log_std), latents)


def _vae_fill():
    encoder = Encoder(nnx.Rngs(0))
    decoder = nnx.Linear(4, 16, rngs=nnx.Rngs(1))
    images = jax.random.normal(jax.random.key(2), (32, 16))
    return dict(
        encoder=encoder, decoder=decoder, optimizer=nnx.Optimizer(encoder, optax.adam(1e-3), wrt=nnx.Param),
        dataloader=[{"images": images}], batch_size=32, value_estimates=encoder(images)[1], jnp=jnp,
        compute_reconstruction_reward=lambda x, y: -jnp.mean(jnp.square(x - y), axis=-1),
    )  # fmt: skip


def test_vae_ppo_snippet():
    """As written, PPOConfig's categorical policy cannot read (mean, log_std): the documented TypeError.

    The page's fix (``PPOConfig(..., policy="gaussian")``) is PPO's Gaussian path, which
    tests/test_guards_paths.py::test_ppo_gaussian_step_matches_numpy checks against numpy
    on this model shape (an actor-critic returning ((mean, log_std), value)); not compiled again here.
    """
    with pytest.raises(TypeError, match=r"returned a tuple of 2 .*policy='categorical' reads logits.*policy='gaussian'"):
        run(S["guide_vae_ppo"], **_vae_fill())
    fixed = S["guide_vae_ppo"].replace(
        "PPOConfig(gamma=0.99, gae_lambda=0.95)", 'PPOConfig(gamma=0.99, gae_lambda=0.95, policy="gaussian")'
    )
    assert 'policy="gaussian"' in fixed  # the change the page documents is a one-keyword edit


class Generator(nnx.Module):
    """noise (N, 8) -> samples (N, 16): a GAN generator, as the seed's ``generator(batch["noise"])``."""

    def __init__(self, rngs: nnx.Rngs, gaussian: bool = False):
        self.out = nnx.Linear(8, 16, rngs=rngs)
        self.gaussian = gaussian

    def __call__(self, noise):
        mean = self.out(noise)
        return (mean, jnp.zeros_like(mean)) if self.gaussian else mean


def test_gan_reinforce_snippet():
    """A generator returning samples is no policy REINFORCE can score: the documented error; a generator
    returning (mean, log_std), sampled, with policy="gaussian" and dones=1 trains."""
    noise = jax.random.normal(jax.random.key(0), (32, 8))
    discriminator = lambda x: -jnp.mean(jnp.square(x - 1.0), axis=-1)  # noqa: E731
    generator = Generator(nnx.Rngs(0))
    fill = dict(generator=generator, optimizer=nnx.Optimizer(generator, optax.adam(1e-3), wrt=nnx.Param),
                dataloader=[{"noise": noise}], discriminator=discriminator)  # fmt: skip
    with pytest.raises(ValueError, match=r"actions should have shape \(32,\), got \(32, 16\).*policy='gaussian'"):
        run(S["guide_gan_reinforce"], **fill)

    gaussian = Generator(nnx.Rngs(0), gaussian=True)
    fixed = (
        S["guide_gan_reinforce"]
        .replace("REINFORCEConfig(entropy_coeff=0.01)", 'REINFORCEConfig(entropy_coeff=0.01, policy="gaussian")')
        .replace('generated = generator(batch["noise"])', 'generated = head.sample(generator(batch["noise"]), key)')
        .replace('"rewards": rewards,', '"rewards": rewards, "dones": jnp.ones(32),')
    )
    from artifex_rl.distributions import GaussianPolicy

    ns = run(fixed, **{**fill, "generator": gaussian, "optimizer": optax.adam(1e-3)},
             head=GaussianPolicy(), key=jax.random.key(1), jnp=jnp)  # fmt: skip
    # with dones = 1 each sample is its own episode: its return is its reward
    assert float(ns["metrics"]["mean_return"]) == pytest.approx(float(ns["metrics"]["mean_reward"]), rel=1e-5)


def test_trainer_hierarchy():
    import artifex_rl
    from artifex_rl import (
        rl,
        trainers,  # the seeds' artifex.generative_models.training.trainers
    )

    assert issubclass(artifex_rl.AutoregressiveTrainer, artifex_rl.Trainer)
    for name in ("REINFORCETrainer", "PPOTrainer", "GRPOTrainer", "DPOTrainer"):
        assert issubclass(getattr(rl, name), artifex_rl.Trainer)
    for name in ("AutoregressiveTrainer", "VAETrainer", "GANTrainer", "DiffusionTrainer", "FlowTrainer", "EnergyTrainer"):
        assert issubclass(getattr(trainers, name), artifex_rl.Trainer), name


# --------------------------------------------------------------------------- #
# API reference imports and the callbacks loop
# --------------------------------------------------------------------------- #
def test_api_reference_imports():
    ns = run(S["guide_api_imports"])
    assert {"REINFORCEConfig", "PPOTrainer", "RewardFunction", "ClippedReward"} <= set(ns)


class BigramLM(nnx.Module):
    """A causal LM of the simplest kind, ``tokens (B, L) -> logits (B, L, V)``; sampled without a cache."""

    def __init__(self, vocab: int, rngs: nnx.Rngs):
        self.embed, self.out = nnx.Embed(vocab, 8, rngs=rngs), nnx.Linear(8, vocab, rngs=rngs)

    def __call__(self, tokens):
        return self.out(self.embed(tokens))


def test_callbacks_loop(tmp_path, monkeypatch):
    """The seed's hand-written loop around online GRPO with W&B, checkpoints, profiler and progress bar."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    model = BigramLM(8, nnx.Rngs(0))
    prompts = np.ones((2, 3), np.int32)
    ns = run(
        S["guide_callbacks"], model=model, optimizer=nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param),
        dataloader=[{"observations": prompts}] * 3, key=jax.random.key(0),
        reward_fn=lambda completions, conditions=None, **kw: jnp.mean(completions == 3, axis=-1).astype(jnp.float32),
    )  # fmt: skip
    assert ns["trainer"].global_step == 3
    assert {"loss", "mean_reward", "group_advantage_std", "kl_penalty"} <= set(ns["metrics"])
    checkpoint = ns["callbacks"][1]
    assert checkpoint.last_model_path and Path(checkpoint.last_model_path).is_dir()  # saved at the end


# --------------------------------------------------------------------------- #
# The seed-to-ours page accounts for every seed name
# --------------------------------------------------------------------------- #
def seed_names() -> set[str]:
    text = "\n".join(p.read_text() for p in SEED_DOCS.glob("*.txt"))
    snake = set(re.findall(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b", text))
    camel = set(re.findall(r"\b[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*[A-Z][A-Za-z0-9]*\b|\b[A-Z]{2,}[a-z][A-Za-z]*\b", text))
    # "choicegae_lambda" is "...choice" + "gae_lambda" run together by the web copy
    return (snake | camel | {"Trainer", "train_step", "compute_loss"}) - {"choicegae_lambda"}


def test_seed_to_ours_page_names_every_seed_name():
    page = PAGE.read_text()
    missing = sorted(n for n in seed_names() if not re.search(rf"`[^`]*\b{re.escape(n)}\b[^`]*`", page))
    assert not missing, f"docs/seed_to_ours.md does not mention (in code) {missing}"


# Where each library name of the seeds lives here (the page's tables say the same).
HOMES = {
    "REINFORCEConfig": "artifex_rl.rl.configs.REINFORCEConfig",
    "REINFORCETrainer": "artifex_rl.rl.reinforce.REINFORCETrainer",
    "PPOConfig": "artifex_rl.rl.configs.PPOConfig",
    "PPOTrainer": "artifex_rl.rl.ppo.PPOTrainer",
    "GRPOConfig": "artifex_rl.rl.configs.GRPOConfig",
    "GRPOTrainer": "artifex_rl.rl.grpo.GRPOTrainer",
    "DPOConfig": "artifex_rl.rl.configs.DPOConfig",
    "DPOTrainer": "artifex_rl.rl.dpo.DPOTrainer",
    "RewardFunction": "artifex_rl.rewards.RewardFunction",
    "ConstantReward": "artifex_rl.rewards.ConstantReward",
    "CompositeReward": "artifex_rl.rewards.CompositeReward",
    "ThresholdReward": "artifex_rl.rewards.ThresholdReward",
    "ScaledReward": "artifex_rl.rewards.ScaledReward",
    "ClippedReward": "artifex_rl.rewards.ClippedReward",
    "compute_discounted_returns": "artifex_rl.rl.losses.returns.compute_discounted_returns",
    "compute_gae_advantages": "artifex_rl.rl.losses.returns.compute_gae_advantages",
    "normalize_advantages": "artifex_rl.rl.losses.aggregation.normalize_advantages",
    "compute_policy_entropy": "artifex_rl.rl.losses.kl.compute_policy_entropy",
    "compute_kl_divergence": "artifex_rl.rl.losses.kl.compute_kl_divergence",
    "compute_clipped_surrogate_loss": "artifex_rl.rl.losses.policy_gradient.compute_clipped_surrogate_loss",
    "WandbLoggerCallback": "artifex_rl.callbacks.wandb_logger.WandbLoggerCallback",
    "WandbLoggerConfig": "artifex_rl.callbacks.wandb_logger.WandbLoggerConfig",
    "ModelCheckpoint": "artifex_rl.callbacks.checkpoint.ModelCheckpoint",
    "CheckpointConfig": "artifex_rl.callbacks.checkpoint.CheckpointConfig",
    "JAXProfiler": "artifex_rl.callbacks.profiler.JAXProfiler",
    "ProfilingConfig": "artifex_rl.callbacks.profiler.ProfilingConfig",
    "ProgressBarCallback": "artifex_rl.callbacks.progress.ProgressBarCallback",
    "Trainer": "artifex_rl.trainer.Trainer",
    "AutoregressiveTrainer": "artifex_rl.autoregressive.AutoregressiveTrainer",
    "VAETrainer": "artifex_rl.generative.vae.VAETrainer",
    "GANTrainer": "artifex_rl.generative.gan.GANTrainer",
    "EnergyTrainer": "artifex_rl.generative.energy.EnergyTrainer",
    "DiffusionTrainer": "artifex_rl.generative.diffusion.DiffusionTrainer",
    "FlowTrainer": "artifex_rl.generative.flow.FlowTrainer",
    "TensorBoard": "artifex_rl.callbacks.tensorboard.TensorBoardLogger",
    "REINFORCETrainer.compute_returns": "artifex_rl.rl.reinforce.REINFORCETrainer.compute_returns",
    "REINFORCETrainer.normalize_returns": "artifex_rl.rl.reinforce.REINFORCETrainer.normalize_returns",
    "REINFORCETrainer.compute_loss": "artifex_rl.rl.reinforce.REINFORCETrainer.compute_loss",
    "REINFORCETrainer.train_step": "artifex_rl.rl.reinforce.REINFORCETrainer.train_step",
}


def _resolve(path: str):
    import importlib

    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


@pytest.mark.parametrize("name", sorted(HOMES))
def test_seed_names_live_where_the_page_says(name):
    assert _resolve(HOMES[name]) is not None
    assert f"`{HOMES[name]}`" in PAGE.read_text(), f"seed_to_ours.md does not give {name}'s home {HOMES[name]}"
