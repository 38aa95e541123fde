"""Tests of the four RL trainers (REINFORCE, PPO, GRPO, DPO) through ``train_step``.

What is checked, per trainer:

* the seeds' snippets run as written (with the ``artifex_rl`` import) and
  report the documented metric names;
* gradients flow, and a step on a batch where one action is better raises
  that action's probability;
* the step compiles once for same-shaped batches;
* the ``loss`` metric of the first step equals an independent plain-numpy
  (float64) evaluation of the formula in the trainer's module docstring, from
  the batch and the model's outputs before the step (the metric is the loss at
  the parameters the step starts from);
* PPO's advantages for every ``values`` layout, GRPO's degenerate groups and
  completion masks, DPO's reference sources;
* bad input fails with an error that names the key and the shapes.

The models are tiny (a linear policy, a linear actor-critic, a causal LM whose
logits at position ``i`` depend only on token ``i``) so every compile is cheap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
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
from artifex_rl.rl.generation import Completions

OBS_DIM = 3
N_ACTIONS = 4
VOCAB = 6
RTOL = 2e-5
ATOL = 2e-6

# --------------------------------------------------------------------------- #
# Tiny models
# --------------------------------------------------------------------------- #


class LinearPolicy(nnx.Module):
    """``(N, OBS_DIM) -> logits (N, N_ACTIONS)``."""

    def __init__(self, obs_dim: int = OBS_DIM, n_actions: int = N_ACTIONS, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(obs_dim, n_actions, rngs=rngs)

    def __call__(self, obs):
        return self.linear(obs)

    def np_forward(self, obs):
        return np_linear(self.linear, obs)


class LinearActorCritic(nnx.Module):
    """``(N, OBS_DIM) -> (logits (N, N_ACTIONS), value (N,))``."""

    def __init__(self, obs_dim: int = OBS_DIM, n_actions: int = N_ACTIONS, *, rngs: nnx.Rngs):
        self.actor = nnx.Linear(obs_dim, n_actions, rngs=rngs)
        self.critic = nnx.Linear(obs_dim, 1, rngs=rngs)

    def __call__(self, obs):
        return self.actor(obs), self.critic(obs)[..., 0]

    def np_forward(self, obs):
        return np_linear(self.actor, obs), np_linear(self.critic, obs)[..., 0]


class CurrentTokenLM(nnx.Module):
    """``tokens (B, L) -> logits (B, L, V)``; causal by construction: position ``i``
    sees only token ``i``."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.out = nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, tokens):
        return self.out(jnp.tanh(self.embed(tokens)))

    def np_forward(self, tokens):
        return np_linear(self.out, np.tanh(np.asarray(self.embed.embedding[...], np.float64)[tokens]))


def np_linear(layer, x):
    """``x @ kernel + bias`` in float64 numpy, from the layer's current parameters."""
    return np.asarray(x, np.float64) @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64)


# --------------------------------------------------------------------------- #
# numpy references (float64, explicit loops where there is a recursion)
# --------------------------------------------------------------------------- #


def np_log_softmax(logits):
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_entropy(logits):
    logp = np_log_softmax(logits)
    return -(np.exp(logp) * logp).sum(axis=-1)


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def np_take(logp, actions):
    return np.take_along_axis(logp, np.asarray(actions)[..., None], axis=-1)[..., 0]


def np_discounted_returns(rewards, dones, gamma):
    """``G_t = r_t + gamma (1 - done_t) G_{t+1}``, time on the last axis."""
    rewards = np.asarray(rewards, np.float64)
    dones = np.zeros_like(rewards) if dones is None else np.asarray(dones, np.float64)
    out = np.zeros_like(rewards)
    following = np.zeros(rewards.shape[:-1])
    for t in reversed(range(rewards.shape[-1])):
        following = rewards[..., t] + gamma * (1.0 - dones[..., t]) * following
        out[..., t] = following
    return out


def np_gae(rewards, values_now, values_next, dones, gamma, lam):
    """GAE with ``values_next[t] = V(s_{t+1})``, time on the last axis."""
    rewards = np.asarray(rewards, np.float64)
    dones = np.zeros_like(rewards) if dones is None else np.asarray(dones, np.float64)
    out = np.zeros_like(rewards)
    following = np.zeros(rewards.shape[:-1])
    for t in reversed(range(rewards.shape[-1])):
        not_done = 1.0 - dones[..., t]
        delta = rewards[..., t] + gamma * values_next[..., t] * not_done - values_now[..., t]
        following = delta + gamma * lam * not_done * following
        out[..., t] = following
    return out


def np_standardize(x, valid=None):
    x = np.asarray(x, np.float64)
    valid = np.ones(x.shape, bool) if valid is None else np.asarray(valid, bool)
    picked = x[valid]
    if picked.max() == picked.min():
        return np.zeros_like(x)
    out = (x - picked.mean()) / (picked.std() + 1e-8)
    return np.where(valid, out, 0.0)


def np_group_advantages(rewards, group_size, scale="group", eps=1e-4):
    rewards = np.asarray(rewards, np.float64)
    out = np.zeros_like(rewards)
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        if group.max() == group.min():
            continue
        deviation = group - group.mean()
        if scale == "group":
            deviation = deviation / (group.std() + eps)
        elif scale == "batch":
            deviation = deviation / (rewards.std() + eps)
        out[start : start + group_size] = deviation
    return out


def np_token_scores(model, prompts, completions):
    """Per-completion-token log-probs and entropies, ``(B, N)`` each, in float64."""
    tokens = np.concatenate([prompts, completions], axis=1)
    logp = np_log_softmax(model.np_forward(tokens))
    positions = prompts.shape[1] - 1 + np.arange(completions.shape[1])  # position P+t-1 predicts token t
    scored = logp[:, positions]
    return np_take(scored, completions), -(np.exp(scored) * scored).sum(axis=-1)


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def host(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def param_leaves(trainer):
    return [np.array(x) for x in jax.tree.leaves(trainer.train_state["params"])]


def reset(trainer, state):
    """Put back a host copy of ``train_state`` (same shapes: the compiled step is reused)."""
    trainer.set_train_state(jax.tree.map(jnp.asarray, state))
    trainer.global_step = 0


def to_float(metrics):
    return {k: float(v) for k, v in metrics.items()}


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol)


def categorical_logits(model, obs):
    """The policy's logits in float64, computed in numpy from the model's current parameters."""
    out = model.np_forward(obs)
    return out[0] if isinstance(out, tuple) else out


def prob_of(model, obs, action):
    return np.exp(np_log_softmax(categorical_logits(model, obs)))[..., action]


def np_sample(rng, logits):
    """Actions drawn from ``softmax(logits)`` with numpy (no device work)."""
    cumulative = np.exp(np_log_softmax(logits)).cumsum(axis=-1)
    return (cumulative > rng.random(cumulative.shape[:-1] + (1,))).argmax(axis=-1)


def random_obs(rng, *shape):
    return rng.normal(size=(*shape, OBS_DIM)).astype(np.float32)


def assert_keys(metrics, names):
    missing = set(names) - set(metrics)
    assert not missing, f"metrics {sorted(metrics)} lack {sorted(missing)}"
    for name in names:
        assert np.isfinite(float(metrics[name])), name


REINFORCE_METRICS = ["loss", "policy_loss", "mean_reward", "reward_std", "entropy"]
PPO_METRICS = [
    "loss", "policy_loss", "value_loss", "entropy", "mean_reward", "advantage_mean",
    "kl_divergence", "clip_fraction", "explained_variance",
]
GRPO_METRICS = [
    "loss", "policy_loss", "mean_reward", "group_advantage_std", "kl_penalty", "approx_kl",
    "frac_reward_zero_std",
]
DPO_METRICS = ["loss", "dpo_loss", "chosen_reward", "rejected_reward", "reward_margin", "reward_accuracy"]


# --------------------------------------------------------------------------- #
# The seeds' snippets
# --------------------------------------------------------------------------- #


def test_seed_reinforce_quick_start(capsys):
    rng = np.random.default_rng(0)
    observations, actions, rewards = random_obs(rng, 8), rng.integers(0, N_ACTIONS, 8), rng.normal(size=8)

    model = LinearPolicy(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)
    config = REINFORCEConfig(gamma=0.99, normalize_returns=True, entropy_coeff=0.01)
    trainer = REINFORCETrainer(model, optimizer, config)
    logits = categorical_logits(model, observations)  # (not in the snippet) the policy before the step
    batch = {"observations": observations, "actions": actions, "rewards": rewards}
    metrics = trainer.train_step(batch)
    print(f"Policy loss: {metrics['policy_loss']:.4f}")

    assert capsys.readouterr().out.startswith("Policy loss: ")
    assert_keys(metrics, REINFORCE_METRICS)
    assert_close(metrics["mean_reward"], rewards.mean())
    assert_close(metrics["reward_std"], rewards.std())
    # No dones: one 8-step episode; its normalised discounted returns weight the log-probs.
    scaled = np_standardize(np_discounted_returns(rewards, None, 0.99))
    policy_loss = -np.mean(np_take(np_log_softmax(logits), actions) * scaled)
    assert_close(metrics["loss"], policy_loss - 0.01 * np_entropy(logits).mean())


def test_seed_ppo_trajectory():
    rng = np.random.default_rng(1)
    steps = 8
    model = LinearActorCritic(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-4), wrt=nnx.Param)
    config = PPOConfig(gamma=0.99, gae_lambda=0.95, clip_param=0.2, vf_coeff=0.5, entropy_coeff=0.01)
    trainer = PPOTrainer(model, optimizer, config)

    observations = random_obs(rng, steps)
    logits, values = model.np_forward(observations)
    actions = np_sample(rng, logits)
    old_log_probs = np_take(np_log_softmax(logits), actions).astype(np.float32)
    trajectory = {
        "observations": observations,
        "actions": actions,
        "rewards": rng.normal(size=steps).astype(np.float32),
        "values": values.astype(np.float32),  # Value estimates V(s)
        "log_probs": old_log_probs,  # Log probs from old policy
        "dones": (np.arange(steps) % 4 == 3).astype(np.float32),  # Episode termination flags
    }
    metrics = trainer.train_step(trajectory)
    print(f"Policy loss: {metrics['policy_loss']:.4f}")
    print(f"Value loss: {metrics['value_loss']:.4f}")
    print(f"Entropy: {metrics['entropy']:.4f}")
    assert_keys(metrics, PPO_METRICS)


def _seed_grpo_batch(rng, model, with_ref):
    num_prompts, group = 8, 4
    observations = np.repeat(random_obs(rng, num_prompts), group, axis=0)  # Shape: (batch_size, ...)
    logits = categorical_logits(model, observations)
    actions = np_sample(rng, logits)  # Shape: (batch_size, ...)
    old_log_probs = np_take(np_log_softmax(logits), actions).astype(np.float32)  # Shape: (batch_size,)
    batch = {
        "observations": observations,
        "actions": actions,
        "rewards": (actions == 1).astype(np.float32),  # Shape: (batch_size,)
        "log_probs": old_log_probs,
        "group_size": 4,  # Optional, defaults to config
    }
    if with_ref:
        batch["ref_log_probs"] = old_log_probs - 0.1
    return batch


@pytest.mark.parametrize("with_ref", [False, True], ids=["group_size_key", "ref_log_probs"])
def test_seed_grpo_batch_with_one_action_per_sample(with_ref):
    """The seeds' GRPO batch: per-sample actions and log-probs, ``policy="categorical"``."""
    rng = np.random.default_rng(2)
    model = LinearPolicy(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)
    config = GRPOConfig(num_generations=4, clip_param=0.2, beta=0.01, policy="categorical")
    trainer = GRPOTrainer(model, optimizer, config)
    batch = _seed_grpo_batch(rng, model, with_ref)
    metrics = trainer.train_step(batch)
    print(f"Policy loss: {metrics['policy_loss']:.4f}")
    print(f"Approx KL: {metrics['approx_kl']:.4f}")
    print(f"KL penalty: {metrics.get('kl_penalty', 0):.4f}")
    assert_keys(metrics, GRPO_METRICS)
    if with_ref:
        # k3 of d = ref - logp = -0.1 at the old (= current) policy, times beta.
        assert_close(metrics["kl_penalty"], 0.01 * (np.exp(-0.1) + 0.1 - 1.0), rtol=1e-4)


def test_seed_grpo_snippet_runs_with_the_default_config():
    rng = np.random.default_rng(2)
    model = LinearPolicy(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)
    trainer = GRPOTrainer(model, optimizer, GRPOConfig(num_generations=4, clip_param=0.2, beta=0.01))
    metrics = trainer.train_step(_seed_grpo_batch(rng, model, with_ref=False))
    assert_keys(metrics, GRPO_METRICS)


@pytest.mark.parametrize("reference_free", [False, True], ids=["dpo", "simpo"])
def test_seed_dpo_log_prob_only_batch_asks_for_sequences(reference_free):
    model = CurrentTokenLM(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-5), wrt=nnx.Param)
    trainer = DPOTrainer(model, optimizer, DPOConfig(beta=0.1, reference_free=reference_free))
    batch = {
        "chosen_log_probs": np.full(4, -3.0, np.float32),
        "rejected_log_probs": np.full(4, -4.0, np.float32),
    }
    if not reference_free:
        batch["ref_chosen_log_probs"] = np.full(4, -3.5, np.float32)
        batch["ref_rejected_log_probs"] = np.full(4, -3.5, np.float32)
    with pytest.raises(ValueError) as info:
        trainer.train_step(batch)
    message = str(info.value)
    for needed in ("'prompts'", "'chosen'", "'rejected'", "no gradient"):
        assert needed in message


# --------------------------------------------------------------------------- #
# Gradients flow, in the right direction
# --------------------------------------------------------------------------- #


def _better_action_case(name):
    """``(trainer, make_batch)``: ``make_batch(rng) -> (obs, batch)`` makes batches of
    one fixed structure in which action 1 is the better one; ``p(action 1)`` is
    measured on ``obs``."""
    actions = np.arange(16) % N_ACTIONS
    plus_minus = np.where(actions == 1, 1.0, -1.0).astype(np.float32)
    one_step = np.ones(16, np.float32)
    if name == "reinforce":
        trainer = REINFORCETrainer(LinearPolicy(rngs=nnx.Rngs(0)), optax.sgd(0.5), REINFORCEConfig(entropy_coeff=0.0, log_grad_norm=True))

        def make_batch(rng):
            obs = random_obs(rng, 16)
            return obs, {"observations": obs, "actions": actions, "rewards": plus_minus, "dones": one_step}
    elif name == "ppo":
        config = PPOConfig(update_epochs=2, num_minibatches=2, entropy_coeff=0.0, target_kl=0.5, log_grad_norm=True)
        trainer = PPOTrainer(LinearActorCritic(rngs=nnx.Rngs(0)), optax.sgd(0.5), config)

        def make_batch(rng):
            obs = random_obs(rng, 16)
            logits, values = trainer.model.np_forward(obs)
            return obs, {
                "observations": obs, "actions": actions, "rewards": plus_minus, "values": values.astype(np.float32),
                "log_probs": np_take(np_log_softmax(logits), actions).astype(np.float32), "dones": one_step,
            }
    elif name == "grpo":
        config = GRPOConfig(num_generations=4, beta=0.0, entropy_coeff=0.0, policy="categorical", log_grad_norm=True)
        trainer = GRPOTrainer(LinearPolicy(rngs=nnx.Rngs(0)), optax.sgd(0.5), config)

        def make_batch(rng):
            obs = np.repeat(random_obs(rng, 4), 4, axis=0)  # one context per group, each action tried once
            return obs, {"observations": obs, "actions": actions, "rewards": (actions == 1).astype(np.float32)}
    else:
        trainer = DPOTrainer(LinearPolicy(rngs=nnx.Rngs(0)), optax.sgd(0.5), DPOConfig(beta=1.0, policy="categorical", log_grad_norm=True))
        others = np.array([0, 2, 3])[np.arange(16) % 3]

        def make_batch(rng):
            obs = random_obs(rng, 16)
            return obs, {"observations": obs, "chosen": np.ones(16, np.int32), "rejected": others}
    return trainer, make_batch


@pytest.mark.parametrize("name", ["reinforce", "ppo", "grpo", "dpo"])
def test_better_action_gains_probability_and_the_step_compiles_once(name):
    trainer, make_batch = _better_action_case(name)
    rng = np.random.default_rng(4)
    obs, batch = make_batch(rng)
    before_params = param_leaves(trainer)
    before = prob_of(trainer.model, obs, 1).mean()
    metrics = trainer.train_step(batch)
    after = prob_of(trainer.model, obs, 1).mean()
    assert float(metrics["grad_norm"]) > 0
    for old, new in zip(before_params, param_leaves(trainer), strict=True):
        assert not np.array_equal(old, new)  # every parameter receives gradient
    assert after > before + 0.01, (before, after)

    for _ in range(5):  # new values, same shapes: no new trace
        metrics = trainer.train_step(make_batch(rng)[1])
    assert np.isfinite(float(metrics["loss"]))
    assert trainer.trace_count == 1
    assert trainer.global_step == 6


# --------------------------------------------------------------------------- #
# REINFORCE: loss formula
# --------------------------------------------------------------------------- #


REINFORCE_CASES = {
    # name: (obs key, layout, with dones, with mask, normalize_returns)
    "steps-dones-raw_returns-states_key": ("states", (10,), True, False, False),
    "trajectories-dones-padding_mask": ("observations", (3, 5), True, True, True),
}


@pytest.mark.parametrize("case", list(REINFORCE_CASES))
def test_reinforce_loss_matches_numpy(case):
    obs_key, lead, with_dones, with_mask, normalize = REINFORCE_CASES[case]
    rng = np.random.default_rng(6)
    gamma, ent_coeff = 0.9, 0.05
    trainer = REINFORCETrainer(
        LinearPolicy(rngs=nnx.Rngs(1)), optax.sgd(0.1),
        REINFORCEConfig(gamma=gamma, normalize_returns=normalize, entropy_coeff=ent_coeff),
    )
    obs, actions = random_obs(rng, *lead), rng.integers(0, N_ACTIONS, lead)
    rewards = rng.normal(size=lead).astype(np.float32)
    batch = {obs_key: obs, "actions": actions, "rewards": rewards}
    dones = mask = None
    if with_dones:
        dones = (rng.random(lead) < 0.3).astype(np.float32)
        batch["dones"] = dones
    if with_mask:
        # Row i's last episode ends (done) at step ends[i]; anything after it is padding.
        ends = np.array([2, 3, 4])
        mask = (np.arange(lead[-1]) <= ends[:, None]).astype(np.float32)
        dones[np.arange(lead[0]), ends] = 1.0
        batch["mask"] = mask
    logits = categorical_logits(trainer.model, obs)

    returns = np_discounted_returns(rewards, dones, gamma)
    padding_valid = np.ones(lead, bool) if mask is None else mask.astype(bool)
    valid = padding_valid.copy()
    if dones is not None:
        # Steps of an episode that does not end inside the window are left out
        # (their return is truncated): a step counts if a done comes at or after it.
        finished = np.flip(np.maximum.accumulate(np.flip(dones > 0, -1), axis=-1), -1)
        valid &= finished
    scaled = np_standardize(returns, valid) if normalize else returns
    log_prob = np_take(np_log_softmax(logits), actions)
    policy_loss = -(log_prob * scaled)[valid].mean()
    entropy = np_entropy(logits)[valid].mean()

    metrics = to_float(trainer.train_step(batch))
    assert_close(metrics["policy_loss"], policy_loss)
    assert_close(metrics["entropy"], entropy)
    assert_close(metrics["loss"], policy_loss - ent_coeff * entropy)
    assert_close(metrics["mean_reward"], rewards[padding_valid].mean())
    assert_close(metrics["reward_std"], rewards[padding_valid].std())
    assert_close(metrics["mean_return"], returns[valid].mean())


def test_reinforce_token_policy_loss_matches_numpy():
    rng = np.random.default_rng(7)
    trainer = REINFORCETrainer(
        CurrentTokenLM(rngs=nnx.Rngs(2)), optax.sgd(0.1), REINFORCEConfig(entropy_coeff=0.1, policy="tokens")
    )
    prompts, completions = rng.integers(0, VOCAB, (4, 2)), rng.integers(0, VOCAB, (4, 3))
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], np.float32)
    rewards = np.array([1.0, -0.5, 2.0, 0.0], np.float32)
    token_lp, token_ent = np_token_scores(trainer.model, prompts, completions)
    valid = mask.astype(bool)
    policy_loss = -np.mean(np.where(valid, token_lp, 0).sum(axis=1) * np_standardize(rewards))
    entropy = token_ent[valid].mean()
    batch = {"observations": prompts, "actions": completions, "rewards": rewards, "completion_mask": mask}
    metrics = to_float(trainer.train_step(batch))
    assert_close(metrics["policy_loss"], policy_loss)
    assert_close(metrics["loss"], policy_loss - 0.1 * entropy)


# --------------------------------------------------------------------------- #
# PPO: loss formula, advantages, target_kl
# --------------------------------------------------------------------------- #


def _ppo_rollout(rng, model, lead, *, values_layout="T+1"):
    """A rollout with random values/old log-probs (so the clips are active)."""
    obs = random_obs(rng, *lead)
    logits = categorical_logits(model, obs)
    actions = np_sample(rng, logits)
    old_log_probs = np_take(np_log_softmax(logits), actions) + rng.normal(scale=0.3, size=lead)
    value_len = lead[-1] + 1 if values_layout == "T+1" else lead[-1]
    batch = {
        "observations": obs,
        "actions": actions,
        "rewards": rng.normal(size=lead).astype(np.float32),
        "values": rng.normal(size=lead[:-1] + (value_len,)).astype(np.float32),
        "log_probs": old_log_probs.astype(np.float32),
        "dones": (rng.random(lead) < 0.25).astype(np.float32),
    }
    return batch


PPO_CASES = {
    # name: (layout, normalize_advantages, clip_value_loss, with mask, obs key)
    "steps-raw_advantages-clipped_value": ((12,), False, True, False, "observations"),
    "trajectories-mask-normalized-unclipped_value-states_key": ((3, 4), True, False, True, "states"),
}


@pytest.mark.parametrize("case", list(PPO_CASES))
def test_ppo_single_update_loss_matches_numpy(case):
    lead, normalize, clip_value, with_mask, obs_key = PPO_CASES[case]
    rng = np.random.default_rng(8)
    gamma, lam, eps, vf, ent_coeff = 0.95, 0.9, 0.2, 0.7, 0.03
    config = PPOConfig(
        gamma=gamma, gae_lambda=lam, clip_param=eps, vf_coeff=vf, entropy_coeff=ent_coeff,
        update_epochs=1, num_minibatches=1, normalize_advantages=normalize, clip_value_loss=clip_value,
    )
    trainer = PPOTrainer(LinearActorCritic(rngs=nnx.Rngs(3)), optax.sgd(0.1), config)
    batch = _ppo_rollout(rng, trainer.model, lead)
    valid = np.ones(lead, bool)
    if with_mask:
        valid[0, 3] = valid[2, 2:] = False
        batch["dones"][0, 2] = batch["dones"][2, 1] = 1.0  # padding only after an episode end
        batch["mask"] = valid.astype(np.float32)
    batch[obs_key] = batch.pop("observations")
    obs = batch[obs_key]
    logits, value = trainer.model.np_forward(obs)

    values = batch["values"].astype(np.float64)
    advantages = np_gae(batch["rewards"], values[..., :-1], values[..., 1:], batch["dones"], gamma, lam)
    old_values = values[..., :-1]
    returns = advantages + old_values
    adv = np_standardize(advantages, valid) if normalize else advantages
    log_prob = np_take(np_log_softmax(logits), batch["actions"])
    ratio = np.exp(log_prob - batch["log_probs"])
    surrogate = -np.minimum(ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv)
    value_err = (value - returns) ** 2
    if clip_value:
        clipped = old_values + np.clip(value - old_values, -eps, eps)
        value_err = np.maximum(value_err, (clipped - returns) ** 2)
    policy_loss = surrogate[valid].mean()
    value_loss = 0.5 * value_err[valid].mean()
    entropy = np_entropy(logits)[valid].mean()
    log_ratio = log_prob - batch["log_probs"]

    metrics = to_float(trainer.train_step(batch))
    assert_close(metrics["policy_loss"], policy_loss)
    assert_close(metrics["value_loss"], value_loss)
    assert_close(metrics["entropy"], entropy)
    assert_close(metrics["loss"], policy_loss + vf * value_loss - ent_coeff * entropy)
    assert_close(metrics["advantage_mean"], advantages[valid].mean())
    assert_close(metrics["kl_divergence"], (np.expm1(log_ratio) - log_ratio)[valid].mean())
    assert_close(metrics["clip_fraction"], (np.abs(ratio - 1) > eps)[valid].mean())
    residual = advantages[valid]
    assert_close(metrics["explained_variance"], 1 - residual.var() / (returns[valid].var() + 1e-8), rtol=1e-4)


@pytest.fixture(scope="module")
def ppo_gae_trainer():
    """One 1x1 PPO trainer shared by the advantage-layout cases (each layout is its own trace)."""
    return PPOTrainer(
        LinearActorCritic(rngs=nnx.Rngs(4)), optax.sgd(0.01),
        PPOConfig(gamma=0.9, gae_lambda=0.8, update_epochs=1, num_minibatches=1),
    )


PPO_VALUE_LAYOUTS = ["T-terminal", "T+last_value", "BxT+last_value+bootstrap_values"]


@pytest.mark.parametrize("layout", PPO_VALUE_LAYOUTS)
def test_ppo_advantages_for_each_values_layout(ppo_gae_trainer, layout):
    """``values`` with T entries: V(s_T) is ``last_value`` or 0; ``bootstrap_values``
    add ``gamma * V`` to the reward of a step cut by a time limit. (The T+1 layout
    is checked by the loss tests above.)"""
    gamma, lam = 0.9, 0.8
    rng = np.random.default_rng(9)
    lead = (2, 5) if layout.startswith("BxT") else (6,)
    batch = _ppo_rollout(rng, ppo_gae_trainer.model, lead, values_layout="T")
    rewards, values, dones = batch["rewards"], batch["values"].astype(np.float64), batch["dones"]
    last = np.zeros(lead[:-1])
    if "last_value" in layout:
        last = np.full(lead[:-1], 2.5, np.float32)  # () or (B,)
        batch["last_value"] = last
        dones[..., -1] = 0.0  # the rollout is cut mid-episode: V(s_T) matters
    following = np.concatenate([values[..., 1:], last[..., None]], axis=-1)
    effective_rewards = rewards
    if "bootstrap_values" in layout:
        # A time limit cut row 0 after step 2: done there, but bootstrap with V(true final obs) = 3.
        dones[0, 2] = 1.0
        bootstrap = np.zeros(lead, np.float32)
        bootstrap[0, 2] = 3.0
        batch["bootstrap_values"] = bootstrap
        effective_rewards = rewards + gamma * bootstrap
    expected = np_gae(effective_rewards, values, following, dones, gamma, lam)
    metrics = to_float(ppo_gae_trainer.train_step(batch))
    assert_close(metrics["advantage_mean"], expected.mean())
    if "bootstrap_values" in layout:
        assert abs(expected.mean() - np_gae(rewards, values, following, dones, gamma, lam).mean()) > 0.1
    if "last_value" in layout:
        terminal = np.concatenate([values[..., 1:], np.zeros(lead[:-1] + (1,))], axis=-1)
        assert abs(expected.mean() - np_gae(effective_rewards, values, terminal, dones, gamma, lam).mean()) > 0.1


def test_ppo_target_kl_stops_the_remaining_updates():
    """3 epochs x 1 minibatch (no shuffling) with a tiny target_kl equals 1 or 2 plain
    single-update steps on the same batch (the first update, at KL = 0, always
    happens), never all 3."""
    obs = random_obs(np.random.default_rng(10), 8)

    def trainer_and_batch(**schedule):
        model = LinearActorCritic(rngs=nnx.Rngs(5))
        trainer = PPOTrainer(model, optax.sgd(0.5), PPOConfig(entropy_coeff=0.0, **schedule))
        logits, values = model.np_forward(obs)
        actions = np.arange(8) % N_ACTIONS
        batch = {
            "observations": obs, "actions": actions, "rewards": np.where(actions == 1, 1.0, -1.0).astype(np.float32),
            "values": values.astype(np.float32), "log_probs": np_take(np_log_softmax(logits), actions).astype(np.float32),
            "dones": np.ones(8, np.float32),
        }
        return trainer, batch

    stopped, batch = trainer_and_batch(update_epochs=3, num_minibatches=1, target_kl=1e-9)
    stopped.train_step(batch)
    single, batch = trainer_and_batch(update_epochs=1, num_minibatches=1)
    after_k_updates = []
    for _ in range(3):  # PPO's prepared batch depends only on the batch, so k steps = k updates
        single.train_step(batch)
        after_k_updates.append(param_leaves(single))

    def same(a, b):
        return all(np.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(a, b, strict=True))

    matching = [k + 1 for k in range(3) if same(param_leaves(stopped), after_k_updates[k])]
    assert matching in ([1], [2]), matching


def test_ppo_minibatches_must_divide_the_samples():
    trainer = PPOTrainer(LinearActorCritic(rngs=nnx.Rngs(0)), optax.sgd(0.1), PPOConfig(num_minibatches=4))
    batch = _ppo_rollout(np.random.default_rng(11), trainer.model, (2, 5))
    with pytest.raises(ValueError, match=r"10 samples into 4 .*10 % 4 != 0"):
        trainer.train_step(batch)


# --------------------------------------------------------------------------- #
# GRPO: loss formula, degenerate groups, completion masks, errors
# --------------------------------------------------------------------------- #


def np_grpo_loss(log_prob, entropy, old, ref, adv, mask, *, eps, eps_high, beta, ent_coeff, loss_type, estimator):
    ratio = np.exp(log_prob - old)
    a = adv[:, None]
    surrogate = -np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps_high) * a)
    per_token = surrogate - ent_coeff * entropy
    kl = np.zeros_like(per_token)
    if ref is not None:
        d = ref - log_prob
        kl = {"k1": -d, "k2": 0.5 * d**2, "k3": np.exp(d) - d - 1}[estimator]
        per_token = per_token + beta * kl
    valid = mask.astype(bool)

    def aggregate(x):
        if loss_type == "grpo":
            return np.mean([row[v].mean() if v.any() else 0.0 for row, v in zip(x, valid, strict=True)])
        if loss_type == "bnpo":
            return x[valid].mean()
        return x[valid].sum() / x.size

    return aggregate(per_token), aggregate(surrogate), kl[valid].mean()


GRPO_CASES = {
    # name: config kwargs, ref source ("batch" | "copy" | None)
    "grpo-ref_in_batch-k3": (dict(loss_type="grpo", beta=0.04), "batch"),
    # no reference at all: beta must be 0 (beta > 0 without one is an error, tested below)
    "bnpo-no_ref-eps_high": (dict(loss_type="bnpo", beta=0.0, epsilon_high=0.28), None),
    "dr_grpo-ref_in_batch-k2-eps_high-batch_scale": (
        dict(loss_type="dr_grpo", beta=0.1, epsilon_high=0.28, kl_estimator="k2", scale_rewards="batch"), "batch"),
    "grpo-frozen_reference_copy-no_scale": (dict(loss_type="grpo", beta=0.1, scale_rewards="none"), "copy"),
}


@pytest.mark.parametrize("case", list(GRPO_CASES))
def test_grpo_token_loss_matches_numpy(case):
    kwargs, ref_source = GRPO_CASES[case]
    rng = np.random.default_rng(12)
    group = 3
    config = GRPOConfig(num_generations=group, clip_param=0.2, entropy_coeff=0.02, **kwargs)
    reference = "copy" if ref_source == "copy" else None
    trainer = GRPOTrainer(CurrentTokenLM(rngs=nnx.Rngs(6)), optax.sgd(0.1), config, reference_model=reference)
    b, p, n = 6, 2, 4
    prompts = np.repeat(rng.integers(0, VOCAB, (b // group, p)), group, axis=0)
    completions = rng.integers(0, VOCAB, (b, n))
    mask = np.ones((b, n), np.float32)
    mask[0, 2:] = mask[3, 1:] = mask[5, 3:] = 0.0  # EOS then padding
    rewards = np.array([1.0, 0.0, 0.5, 2.0, 2.0, 2.0], np.float32)  # second group degenerate
    log_prob, entropy = np_token_scores(trainer.model, prompts, completions)
    old = (log_prob + rng.normal(scale=0.3, size=(b, n))).astype(np.float32)
    batch = {"prompts": prompts, "actions": completions, "rewards": rewards, "log_probs": old, "completion_mask": mask}
    ref = None
    if ref_source == "batch":
        ref = (log_prob + rng.normal(scale=0.5, size=(b, n))).astype(np.float32)
        batch["ref_log_probs"] = ref
    elif ref_source == "copy":
        ref = log_prob  # the frozen copy is the policy itself at step 1
    adv = np_group_advantages(rewards, group, config.scale_rewards)
    loss, policy_loss, kl = np_grpo_loss(
        log_prob, entropy, old, ref, adv, mask, eps=0.2, eps_high=config.epsilon_high or 0.2, beta=config.beta,
        ent_coeff=0.02, loss_type=config.loss_type, estimator=config.kl_estimator,
    )
    metrics = to_float(trainer.train_step(batch))
    assert_close(metrics["loss"], loss)
    assert_close(metrics["policy_loss"], policy_loss)
    assert_close(metrics["kl_penalty"], config.beta * kl)
    assert_close(metrics["entropy"], entropy[mask.astype(bool)].mean())
    assert_close(metrics["group_advantage_std"], adv.std(), rtol=1e-4)
    assert_close(metrics["frac_reward_zero_std"], 0.5)
    assert_close(metrics["mean_reward"], rewards.mean())


def test_grpo_categorical_loss_matches_numpy_k1_batch_scale_states_key_on_policy():
    rng = np.random.default_rng(13)
    config = GRPOConfig(num_generations=4, beta=0.05, entropy_coeff=0.01, policy="categorical", epsilon_high=0.3,
                        kl_estimator="k1", scale_rewards="batch")
    trainer = GRPOTrainer(LinearPolicy(rngs=nnx.Rngs(7)), optax.sgd(0.1), config, reference_model=None)
    obs = np.repeat(random_obs(rng, 3), 4, axis=0)
    actions = rng.integers(0, N_ACTIONS, 12)
    rewards = rng.normal(size=12).astype(np.float32)
    logits = categorical_logits(trainer.model, obs)
    log_prob = np_take(np_log_softmax(logits), actions)
    ref = (log_prob + rng.normal(scale=0.5, size=12)).astype(np.float32)
    # No "log_probs": on-policy, old = current, so every ratio is 1.
    batch = {"states": obs, "actions": actions, "rewards": rewards, "ref_log_probs": ref}
    loss, _, kl = np_grpo_loss(
        log_prob[:, None], np_entropy(logits)[:, None], log_prob[:, None], ref[:, None].astype(np.float64),
        np_group_advantages(rewards, 4, "batch"), np.ones((12, 1)), eps=0.2, eps_high=0.3, beta=0.05,
        ent_coeff=0.01, loss_type="grpo", estimator="k1",
    )
    metrics = to_float(trainer.train_step(batch))
    assert_close(metrics["loss"], loss)
    assert_close(metrics["kl_penalty"], 0.05 * kl)
    assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-6)


def test_grpo_only_degenerate_groups_leave_params_unchanged():
    rng = np.random.default_rng(14)
    config = GRPOConfig(num_generations=4, beta=0.0, entropy_coeff=0.0, policy="categorical", log_grad_norm=True)
    trainer = GRPOTrainer(LinearPolicy(rngs=nnx.Rngs(8)), optax.adam(0.1), config)
    obs = np.repeat(random_obs(rng, 3), 4, axis=0)
    actions = rng.integers(0, N_ACTIONS, 12)
    rewards = np.repeat(np.array([0.0, 1.0, -3.5], np.float32), 4)
    old = np.log(np.full(12, 0.2, np.float32))  # off-policy ratios: only A = 0 can zero the gradient
    before = param_leaves(trainer)
    metrics = to_float(trainer.train_step({"observations": obs, "actions": actions, "rewards": rewards, "log_probs": old}))
    assert metrics["frac_reward_zero_std"] == 1.0
    assert metrics["group_advantage_std"] == 0.0
    assert metrics["grad_norm"] == 0.0
    assert metrics["loss"] == 0.0
    for old_leaf, new_leaf in zip(before, param_leaves(trainer), strict=True):
        np.testing.assert_array_equal(old_leaf, new_leaf)


def test_grpo_batch_must_hold_whole_groups():
    trainer = GRPOTrainer(LinearPolicy(rngs=nnx.Rngs(0)), optax.sgd(0.1), GRPOConfig(policy="categorical"))
    batch = {"observations": random_obs(np.random.default_rng(0), 6), "actions": np.zeros(6, np.int32),
             "rewards": np.zeros(6, np.float32)}
    with pytest.raises(ValueError, match=r"'rewards'.*\(6,\).*group_size=4.*6 % 4 != 0"):
        trainer.train_step(batch)
    with pytest.raises(ValueError, match=r"group_size=5"):
        trainer.train_step({**batch, "group_size": 5})


def _masked_token_batch(rng, b=4, p=2, n=5):
    prompts = rng.integers(0, VOCAB, (b, p))
    completions = rng.integers(0, VOCAB, (b, n))
    mask = np.ones((b, n), np.float32)
    mask[0, 2:] = mask[2, 1:] = mask[3, 4:] = 0.0  # padding after each row's EOS
    batch = {
        "prompts": prompts, "actions": completions, "completion_mask": mask,
        "rewards": np.array([1.0, 0.0, 0.3, 0.9], np.float32),
        "log_probs": (rng.normal(size=(b, n)) - 2).astype(np.float32),
        "ref_log_probs": (rng.normal(size=(b, n)) - 2).astype(np.float32),
    }
    return batch, ~mask.astype(bool)


def test_grpo_padding_after_eos_never_contributes():
    """Tokens, old and reference log-probs at masked positions do not change the loss,
    the KL, the entropy or the update."""
    rng = np.random.default_rng(15)
    config = GRPOConfig(num_generations=2, beta=0.1, entropy_coeff=0.05, loss_type="grpo", log_grad_norm=True)
    trainer = GRPOTrainer(CurrentTokenLM(rngs=nnx.Rngs(9)), optax.sgd(0.5), config)
    initial = host(trainer.train_state)
    batch, padding = _masked_token_batch(rng)
    clean = to_float(trainer.train_step(batch))
    clean_params = param_leaves(trainer)

    garbage = {k: v.copy() for k, v in batch.items()}
    garbage["actions"][padding] = (garbage["actions"][padding] + 1 + rng.integers(0, VOCAB - 1, padding.sum())) % VOCAB
    garbage["log_probs"][padding] = rng.uniform(-60, 60, padding.sum())
    garbage["ref_log_probs"][padding] = rng.uniform(-60, 60, padding.sum())
    assert (garbage["actions"][padding] != batch["actions"][padding]).all()
    reset(trainer, initial)
    dirty = to_float(trainer.train_step(garbage))

    assert trainer.trace_count == 1
    for key in ("loss", "policy_loss", "kl", "entropy", "approx_kl", "clip_fraction", "grad_norm"):
        assert dirty[key] == pytest.approx(clean[key], rel=1e-6, abs=1e-7), key
    for a, b in zip(clean_params, param_leaves(trainer), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _tiny_token_sampler(model, prompts, key, new_tokens=3):
    """A ``sample_fn``: ``new_tokens`` tokens sampled from the current-token LM."""
    b, p = prompts.shape
    tokens, log_probs = prompts, []
    for _ in range(new_tokens):
        key, sub = jax.random.split(key)
        logits = model(tokens)[:, -1]
        token = jax.random.categorical(sub, logits)
        log_probs.append(jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[:, 0])
        tokens = jnp.concatenate([tokens, token[:, None]], axis=1)
    return Completions(tokens[:, p:], jnp.ones((b, new_tokens)), jnp.stack(log_probs, axis=1))


def test_grpo_host_reward_nan_is_left_out_of_its_group():
    """An unscorable sample (NaN reward) is excluded from its group's statistics, as TRL and
    Tunix do (issue 14); the fraction is logged and the parameters stay finite."""

    def numpy_reward_with_a_nan(completions, conditions, completion_mask=None):
        rewards = (np.asarray(completions)[:, 0] == 1).astype(np.float32)  # needs concrete values: host only
        rewards[3] = np.nan
        return rewards

    trainer = GRPOTrainer(CurrentTokenLM(rngs=nnx.Rngs(10)), optax.sgd(0.1), GRPOConfig(num_generations=4),
                          sample_fn=_tiny_token_sampler)
    prompts = np.random.default_rng(16).integers(0, VOCAB, (2, 2))
    metrics = trainer.train_step({"prompts": prompts}, numpy_reward_with_a_nan, jax.random.key(0))
    assert trainer.reward_on_host
    assert float(metrics["nonfinite_reward_frac"]) == pytest.approx(1 / 8)
    assert float(metrics["skipped_step"]) == 0.0
    assert all(np.isfinite(x).all() for x in param_leaves(trainer))


# --------------------------------------------------------------------------- #
# DPO: loss formula, reference sources
# --------------------------------------------------------------------------- #


def np_dpo(pi_c, pi_r, ref_c, ref_r, *, beta, ls, loss_type, reference_free, gamma, len_c, len_r):
    if reference_free:
        chosen, rejected = beta * pi_c / len_c, beta * pi_r / len_r
        z = chosen - rejected - gamma
        losses = -(1 - ls) * np_log_sigmoid(z) - ls * np_log_sigmoid(-z)
    else:
        chosen, rejected = beta * (pi_c - ref_c), beta * (pi_r - ref_r)
        logits = (pi_c - pi_r) - (ref_c - ref_r)
        if loss_type == "sigmoid":
            losses = -(1 - ls) * np_log_sigmoid(beta * logits) - ls * np_log_sigmoid(-beta * logits)
        elif loss_type == "hinge":
            losses = np.maximum(0.0, 1 - beta * logits)
        elif loss_type == "ipo":
            losses = (logits - 1 / (2 * beta)) ** 2
        else:  # robust
            losses = ((1 - ls) * -np_log_sigmoid(beta * logits) + ls * np_log_sigmoid(-beta * logits)) / (1 - 2 * ls)
    return losses.mean(), chosen, rejected


DPO_CASES = {
    "sigmoid-label_smoothing": dict(loss_type="sigmoid", label_smoothing=0.1, beta=0.5),
    "hinge": dict(loss_type="hinge", beta=0.5),
    "ipo": dict(loss_type="ipo", beta=0.5),
    "robust": dict(loss_type="robust", label_smoothing=0.2, beta=0.5),
    "simpo": dict(reference_free=True, beta=2.0, simpo_gamma=0.3, label_smoothing=0.05),
}


@pytest.mark.parametrize("case", list(DPO_CASES))
def test_dpo_token_loss_matches_numpy(case):
    kwargs = DPO_CASES[case]
    config = DPOConfig(**kwargs)
    rng = np.random.default_rng(17)
    # SimPO (the seeds' reference_free=True) never builds a reference model.
    reference = "copy" if config.reference_free else None
    trainer = DPOTrainer(CurrentTokenLM(rngs=nnx.Rngs(11)), optax.sgd(0.1), config, reference_model=reference)
    assert not trainer.has_reference_model
    b, p, n = 5, 2, 4
    prompts = rng.integers(0, VOCAB, (b, p))
    chosen, rejected = rng.integers(0, VOCAB, (b, n)), rng.integers(0, VOCAB, (b, n))
    chosen_mask = (np.arange(n) < np.array([4, 2, 3, 1, 4])[:, None]).astype(np.float32)
    rejected_mask = (np.arange(n) < np.array([3, 4, 1, 2, 4])[:, None]).astype(np.float32)
    batch = {"prompts": prompts, "chosen": chosen, "rejected": rejected,
             "chosen_mask": chosen_mask, "rejected_mask": rejected_mask}
    lp_c, _ = np_token_scores(trainer.model, prompts, chosen)
    lp_r, _ = np_token_scores(trainer.model, prompts, rejected)
    pi_c, pi_r = (lp_c * chosen_mask).sum(1), (lp_r * rejected_mask).sum(1)
    ref_c = ref_r = None
    if not config.reference_free:
        ref_c = (pi_c + rng.normal(scale=2.0, size=b)).astype(np.float32)
        ref_r = (pi_r + rng.normal(scale=2.0, size=b)).astype(np.float32)
        batch["ref_chosen_log_probs"], batch["ref_rejected_log_probs"] = ref_c, ref_r
    loss, chosen_reward, rejected_reward = np_dpo(
        pi_c, pi_r, ref_c, ref_r, beta=config.beta, ls=config.label_smoothing, loss_type=config.loss_type,
        reference_free=config.reference_free, gamma=config.simpo_gamma,
        len_c=chosen_mask.sum(1), len_r=rejected_mask.sum(1),
    )
    metrics = to_float(trainer.train_step(batch))
    assert_close(metrics["loss"], loss)
    assert_close(metrics["dpo_loss"], loss)
    assert_close(metrics["chosen_reward"], chosen_reward.mean())
    assert_close(metrics["rejected_reward"], rejected_reward.mean())
    assert_close(metrics["reward_margin"], (chosen_reward - rejected_reward).mean())
    assert_close(metrics["reward_accuracy"], (chosen_reward > rejected_reward).mean())


def test_dpo_categorical_loss_matches_numpy_with_states_key():
    rng = np.random.default_rng(18)
    trainer = DPOTrainer(LinearPolicy(rngs=nnx.Rngs(12)), optax.sgd(0.1), DPOConfig(beta=0.3, policy="categorical"),
                         reference_model=None)
    obs = random_obs(rng, 6)
    chosen, rejected = rng.integers(0, N_ACTIONS, 6), rng.integers(0, N_ACTIONS, 6)
    ref_c, ref_r = (rng.normal(size=6) - 1.4).astype(np.float32), (rng.normal(size=6) - 1.4).astype(np.float32)
    logp = np_log_softmax(categorical_logits(trainer.model, obs))
    loss, _, _ = np_dpo(np_take(logp, chosen), np_take(logp, rejected), ref_c, ref_r, beta=0.3, ls=0.0,
                        loss_type="sigmoid", reference_free=False, gamma=0.0, len_c=1, len_r=1)
    batch = {"states": obs, "chosen": chosen, "rejected": rejected,
             "ref_chosen_log_probs": ref_c, "ref_rejected_log_probs": ref_r}
    assert_close(trainer.train_step(batch)["loss"], loss)


def test_dpo_reference_from_batch_equals_frozen_reference_copy():
    rng = np.random.default_rng(19)
    prompts, chosen, rejected = (rng.integers(0, VOCAB, (4, k)) for k in (2, 3, 3))
    masks = {"chosen_mask": np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], np.float32),
             "rejected_mask": np.array([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]], np.float32)}
    batch = {"prompts": prompts, "chosen": chosen, "rejected": rejected, **masks}

    with_copy = DPOTrainer(CurrentTokenLM(rngs=nnx.Rngs(13)), optax.sgd(0.5), DPOConfig(beta=0.2))
    assert with_copy.has_reference_model
    from_batch = DPOTrainer(CurrentTokenLM(rngs=nnx.Rngs(13)), optax.sgd(0.5), DPOConfig(beta=0.2),
                            reference_model=None)
    lp_c, _ = np_token_scores(from_batch.model, prompts, chosen)
    lp_r, _ = np_token_scores(from_batch.model, prompts, rejected)
    own = {"ref_chosen_log_probs": (lp_c * masks["chosen_mask"]).sum(1).astype(np.float32),
           "ref_rejected_log_probs": (lp_r * masks["rejected_mask"]).sum(1).astype(np.float32)}

    a = to_float(with_copy.train_step(batch))
    b = to_float(from_batch.train_step({**batch, **own}))
    assert a["loss"] == pytest.approx(np.log(2.0), rel=1e-6)  # policy == reference: every margin is 0
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    for x, y in zip(param_leaves(with_copy), param_leaves(from_batch), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    # The frozen copy does not follow the policy: on step 2 the margins are no longer 0.
    assert float(with_copy.train_step(batch)["loss"]) < a["loss"]


def test_dpo_without_any_reference_is_a_clear_error():
    trainer = DPOTrainer(CurrentTokenLM(rngs=nnx.Rngs(0)), optax.sgd(0.1), DPOConfig(), reference_model=None)
    assert not trainer.has_reference_model
    rng = np.random.default_rng(20)
    batch = {"prompts": rng.integers(0, VOCAB, (2, 2)), "chosen": rng.integers(0, VOCAB, (2, 3)),
             "rejected": rng.integers(0, VOCAB, (2, 3))}
    with pytest.raises(ValueError, match=r"ref_chosen_log_probs.*reference_model.*reference_free=True"):
        trainer.train_step(batch)


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #


def _valid_case(name, rng):
    """A fresh trainer and a valid batch of 8 samples for it."""
    obs, actions = random_obs(rng, 8), rng.integers(0, N_ACTIONS, 8)
    if name == "reinforce":
        return (REINFORCETrainer(LinearPolicy(rngs=nnx.Rngs(0)), optax.sgd(0.1)),
                {"observations": obs, "actions": actions, "rewards": np.zeros(8, np.float32)})
    if name == "ppo":
        return (PPOTrainer(LinearActorCritic(rngs=nnx.Rngs(0)), optax.sgd(0.1)),
                {"observations": obs, "actions": actions, "rewards": np.zeros(8, np.float32),
                 "values": np.zeros(9, np.float32), "log_probs": np.zeros(8, np.float32)})
    if name == "grpo":
        return (GRPOTrainer(CurrentTokenLM(rngs=nnx.Rngs(0)), optax.sgd(0.1)),
                {"prompts": rng.integers(0, VOCAB, (8, 2)), "actions": rng.integers(0, VOCAB, (8, 3)),
                 "rewards": np.zeros(8, np.float32), "log_probs": np.zeros((8, 3), np.float32)})
    return (DPOTrainer(CurrentTokenLM(rngs=nnx.Rngs(0)), optax.sgd(0.1)),
            {"prompts": rng.integers(0, VOCAB, (8, 2)), "chosen": rng.integers(0, VOCAB, (8, 3)),
             "rejected": rng.integers(0, VOCAB, (8, 3))})


MISSING_KEY_CASES = [("reinforce", "rewards"), ("ppo", "values"), ("ppo", "log_probs"), ("grpo", "actions"),
                     ("dpo", "rejected")]


@pytest.mark.parametrize(("name", "key"), MISSING_KEY_CASES)
def test_missing_key_is_a_key_error_naming_it(name, key):
    trainer, batch = _valid_case(name, np.random.default_rng(21))
    del batch[key]
    with pytest.raises(KeyError, match=rf"missing \['{key}'\]"):
        trainer.train_step(batch)
    assert trainer.global_step == 0


WRONG_SHAPE_CASES = [
    # trainer, key, bad value, pattern naming key, got, expected
    ("reinforce", "actions", np.zeros(7, np.int32), r"'actions'\] has shape \(7,\), expected leading dims \(8,\)"),
    ("reinforce", "dones", np.zeros((8, 1)), r"'dones'\] has shape \(8, 1\), expected \(8\)"),
    ("ppo", "values", np.zeros(7, np.float32), r"'values'\] has shape \(7,\), expected \(8,\).*\(9,\)"),
    ("ppo", "log_probs", np.zeros((8, 2), np.float32), r"'log_probs'\] has shape \(8, 2\), expected \(8\)"),
    ("grpo", "log_probs", np.zeros((8,), np.float32), r"'log_probs'\] has shape \(8,\), expected \(8, 3\)"),
    ("grpo", "completion_mask", np.ones((8, 4), np.float32),
     r"'completion_mask'\] has shape \(8, 4\), expected \(8, 3\)"),
    ("dpo", "rejected", np.zeros((8, 4), np.int32), r"'rejected'\] has shape \(8, 4\), expected \(8, 3\)"),
    ("dpo", "ref_chosen_log_probs", np.zeros((8, 3), np.float32),
     r"'ref_chosen_log_probs'\] has shape \(8, 3\), expected \(8\)"),
]


@pytest.mark.parametrize(("name", "key", "value", "pattern"), WRONG_SHAPE_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in WRONG_SHAPE_CASES])
def test_wrong_shape_names_key_got_and_expected(name, key, value, pattern):
    trainer, batch = _valid_case(name, np.random.default_rng(22))
    batch[key] = value
    if key == "ref_chosen_log_probs":
        batch["ref_rejected_log_probs"] = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=pattern):
        trainer.train_step(batch)
    assert trainer.global_step == 0


NAN_PADDING_CASES = {
    # name: the key whose padded (mask = 0) entries become NaN
    "reinforce-rewards": "rewards",
    "ppo-values": "values",
    "grpo-log_probs": "log_probs",
}


def _nan_padding_case(name, rng):
    if name.startswith("reinforce"):
        trainer = REINFORCETrainer(LinearPolicy(rngs=nnx.Rngs(0)), optax.sgd(0.1))
        mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
        batch = {"observations": random_obs(rng, 2, 4), "actions": rng.integers(0, N_ACTIONS, (2, 4)),
                 "rewards": rng.normal(size=(2, 4)).astype(np.float32),
                 "dones": np.array([[0, 0, 1, 0], [0, 1, 0, 0]], np.float32), "mask": mask}
        return trainer, batch, ~mask.astype(bool)
    if name.startswith("ppo"):
        trainer = PPOTrainer(LinearActorCritic(rngs=nnx.Rngs(0)), optax.sgd(0.1),
                             PPOConfig(update_epochs=1, num_minibatches=1))
        mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
        batch = {"observations": random_obs(rng, 2, 4), "actions": rng.integers(0, N_ACTIONS, (2, 4)),
                 "rewards": rng.normal(size=(2, 4)).astype(np.float32),
                 "values": rng.normal(size=(2, 4)).astype(np.float32),
                 "log_probs": np.full((2, 4), -1.4, np.float32),
                 "dones": np.array([[0, 0, 1, 0], [0, 1, 0, 0]], np.float32), "mask": mask}
        return trainer, batch, ~mask.astype(bool)
    trainer = GRPOTrainer(CurrentTokenLM(rngs=nnx.Rngs(0)), optax.sgd(0.1), GRPOConfig(num_generations=2))
    batch, padding = _masked_token_batch(rng)
    return trainer, batch, padding


@pytest.mark.parametrize("name", list(NAN_PADDING_CASES))
def test_nan_padding_at_masked_steps_does_not_leak(name):
    trainer, batch, padding = _nan_padding_case(name, np.random.default_rng(23))
    initial = host(trainer.train_state)
    clean = to_float(trainer.train_step(batch))
    clean_params = param_leaves(trainer)
    key = NAN_PADDING_CASES[name]
    batch[key] = batch[key].copy()
    batch[key][padding] = np.nan
    reset(trainer, initial)
    dirty = to_float(trainer.train_step(batch))
    assert dirty["loss"] == pytest.approx(clean["loss"], rel=1e-6)
    for a, b in zip(clean_params, param_leaves(trainer), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_nan_host_rewards_at_real_steps_are_rejected_before_the_step():
    model = LinearPolicy(rngs=nnx.Rngs(0))
    trainer = REINFORCETrainer(model, optax.sgd(0.1), REINFORCEConfig())
    rewards = np.ones(8, np.float32)
    rewards[5] = np.nan
    batch = {"observations": np.zeros((8, OBS_DIM), np.float32), "actions": np.zeros(8, np.int32), "rewards": rewards}
    with pytest.raises(ValueError, match=r"REINFORCETrainer: batch\['rewards'\] \(shape \(8,\)\) holds NaN or inf at positions \[\[5\]\]"):
        trainer.train_step(batch)
    assert trainer.global_step == 0
    # The same NaN at a padded (mask 0) step is allowed: padding may hold anything.
    mask = np.ones(8, np.float32)
    mask[5] = 0
    metrics = trainer.train_step({**batch, "mask": mask})
    assert np.isfinite(float(metrics["loss"]))
