"""Behaviour guards for paths the rest of the suite never ran to success: GRPO's
host-reward and online sampling, DPO's own term, Gaussian policies, and the CLI's
``--wandb-mode``.

Like ``test_guards_updates.py``, each test failed under one of the mutations of
``shared/reviews/test-audit.md`` that survived the suite (named in its
docstring), and uses only public behaviour: constructors, ``train_step``,
``fit``, returned metrics, ``trainer.model`` and a user ``sample_fn`` /
``reward_fn``. References are float64 numpy (``tests/_guard_refs.py``).
"""

from __future__ import annotations

import glob
import json
import os

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
from tests._guard_refs import (
    CurrentTokenLM,
    GaussianActorCritic,
    GaussianPolicyNet,
    LinearPolicy,
    assert_params_close,
    clipped_surrogate,
    close,
    d_logp_d_logits,
    discounted_returns,
    gaussian_entropy,
    gaussian_log_prob,
    group_advantages,
    layer,
    log_softmax,
    params_differ,
    params_of,
    ratio_diagnostics,
    standardize,
    take,
    to_float,
)

# --------------------------------------------------------------------------- #
# Online GRPO on a tiny token LM, with a user sample_fn that stops at EOS
# --------------------------------------------------------------------------- #

VOCAB, EOS, PAD, NEW_TOKENS, GROUP = 6, 1, 0, 4, 4
PROMPTS = np.array([[2, 3], [4, 5]], np.int32)




def eos_sampler(model, prompts, key):
    """Samples ``NEW_TOKENS`` tokens at temperature 1; after the first EOS, PAD and mask 0.

    The model's next-token logits depend only on the last token (see
    ``CurrentTokenLM``), so each step feeds that token alone: a one-token "cache".
    """
    b, p = prompts.shape

    def step(carry, key):
        last, alive = carry
        logits = model(last[:, None])[:, -1]
        token = jax.random.categorical(key, logits)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[:, 0]
        token = jnp.where(alive, token, PAD)
        out = (token, alive.astype(jnp.float32), jnp.where(alive, logp, 0.0))
        return (token, alive & (token != EOS)), out

    carry = (prompts[:, -1], jnp.ones((b,), bool))
    _, (tokens, mask, log_probs) = jax.lax.scan(step, carry, jax.random.split(key, NEW_TOKENS))
    # The documented sample_fn contract: prompt-free (B, N) completions.
    return Completions(tokens.T, mask.T, log_probs.T)


def np_completion_mask(completions: np.ndarray) -> np.ndarray:
    """1 on every token up to and including the first EOS (computed from the tokens alone)."""
    eos = completions == EOS
    return ((np.cumsum(eos, axis=1) - eos) == 0).astype(np.float32)


def graded(completions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A reward that depends on every real token and on the length (plain numpy)."""
    real = mask > 0
    per_token = (completions * np.array([1, 3, 5, 7])[: completions.shape[1]]) % 5
    return (np.where(real, per_token, 0).sum(axis=1) + 0.5 * real.sum(axis=1)).astype(np.float32)


def _token_grpo(reward_fn, lr, **config):
    settings = dict(num_generations=GROUP, beta=0.0, entropy_coeff=0.0, policy="tokens")
    return GRPOTrainer(CurrentTokenLM(VOCAB, rngs=nnx.Rngs(0)), optax.sgd(lr), GRPOConfig(**{**settings, **config}),
                       reward_fn=reward_fn, sample_fn=eos_sampler,
                       reference_model="copy" if config.get("beta", 0.0) > 0 else None)


def test_grpo_host_reward_path_pairs_rewards_with_their_completions_and_skips_padding():
    """A numpy reward_fn (not traceable: scored on the host) on online token GRPO.

    Mutations grpo_host_path_reversed_rewards and grpo_host_path_drops_mask: with the
    "bnpo" aggregation at ratio 1 the policy loss is ``-sum_i A_i n_i / sum_i n_i``
    (``n_i`` real tokens of completion ``i``), which depends on which reward goes
    with which completion and on the mask; and the update equals the offline step
    on the same completions, mask and rewards. The second step samples afresh and
    measures a KL > 0 to the frozen reference.
    """
    calls = []

    def numpy_reward(completions, conditions, completion_mask=None):
        c, m = np.asarray(completions), np.asarray(completion_mask)  # host only
        calls.append((c.copy(), m.copy()))
        return graded(c, m)

    trainer = _token_grpo(numpy_reward, lr=1.0, loss_type="bnpo", beta=0.2)
    start = params_of(trainer)
    metrics = to_float(trainer.train_step({"prompts": PROMPTS}))
    assert abs(metrics["kl"]) < 1e-6  # the reference is the policy itself at step 1
    assert len(calls) == 1
    completions, seen_mask = calls[0]
    mask = np_completion_mask(completions)
    np.testing.assert_array_equal(seen_mask, mask)
    lengths = mask.sum(axis=1)
    assert lengths.min() < NEW_TOKENS and lengths.max() > lengths.min(), "the case needs padding after EOS"
    rewards = graded(completions, mask)
    adv = group_advantages(rewards, GROUP)
    assert np.abs(adv).max() > 0.1
    close(metrics["policy_loss"], -np.sum(adv * lengths) / lengths.sum(), rtol=1e-4, atol=1e-5, what="policy_loss")
    close(metrics["completion_length"], lengths.mean(), what="completion_length")
    close(metrics["mean_reward"], rewards.mean(), what="mean_reward")

    offline = _token_grpo(None, lr=1.0, loss_type="bnpo", beta=0.2)
    offline.train_step({"prompts": np.repeat(PROMPTS, GROUP, axis=0), "actions": completions.astype(np.int32),
                        "completion_mask": mask, "rewards": rewards})
    assert params_differ(start, params_of(trainer))
    assert_params_close(params_of(trainer), params_of(offline), rtol=1e-4, atol=1e-6)

    second = to_float(trainer.train_step({"prompts": PROMPTS}))
    assert len(calls) == 2 and not np.array_equal(calls[0][0], calls[1][0]), "the host path resampled nothing"
    # Mutation grpo_kl_ref_is_policy on the token path: the frozen reference stayed behind.
    assert second["kl"] > 1e-5, second["kl"]


def fingerprint_reward(completions, conditions, completion_mask=None):
    """A traceable reward that differs for (almost) any two completions."""
    weights = VOCAB ** jnp.arange(completions.shape[1])
    return jnp.sum(completions * weights, axis=1).astype(jnp.float32)


def test_online_grpo_samples_new_completions_each_step():
    """Mutation rng_not_folded_with_step: with a fixed policy (learning rate 0) and the
    same prompts, consecutive compiled online steps must still draw different
    completions (seen through a reward that fingerprints them)."""
    trainer = _token_grpo(fingerprint_reward, lr=0.0)
    rewards = [to_float(trainer.train_step({"prompts": PROMPTS}))["mean_reward"] for _ in range(3)]
    assert len(set(rewards)) == 3, f"the same completions at several steps: mean rewards {rewards}"


# --------------------------------------------------------------------------- #
# DPO's own term (mutation dpo_term_off_nll_only)
# --------------------------------------------------------------------------- #

OBS_DIM, N_ACTIONS = 3, 4


def _np_dpo_step(params, ref, batch, beta, nll_coeff, lr):
    """One DPO (sigmoid) + nll_coeff * NLL(chosen) SGD step of a categorical linear policy.

    ``loss = mean_i -log sigma(beta [(pi_c - ref_c) - (pi_r - ref_r)]) - nll_coeff mean_i pi_c``.
    """
    x = batch["observations"].astype(np.float64)
    w, b = layer(params, "pi")
    logp = log_softmax(x @ w + b)
    ref_logp = log_softmax(x @ ref["pi/kernel"] + ref["pi/bias"])
    c, r = batch["chosen"], batch["rejected"]
    margin = (take(logp, c) - take(ref_logp, c)) - (take(logp, r) - take(ref_logp, r))
    z = beta * margin
    n = len(x)
    loss = np.mean(np.logaddexp(0.0, -z)) - nll_coeff * np.mean(take(logp, c))
    d_z = -1.0 / (1.0 + np.exp(z)) / n  # d/dz of -log sigma(z), batch mean
    d_chosen = beta * d_z - nll_coeff / n
    d_logits = d_chosen[:, None] * d_logp_d_logits(logp, c) - beta * d_z[:, None] * d_logp_d_logits(logp, r)
    new = {"pi/kernel": w - lr * x.T @ d_logits, "pi/bias": b - lr * d_logits.sum(axis=0)}
    return new, {"loss": loss, "reward_margin": beta * margin.mean(), "reward_accuracy": np.mean(margin > 0)}


def _preference_pairs(rng, n):
    """Pairs where the chosen action is the best under a fixed linear rule."""
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    best = np.argmax(obs @ np.array([[2.0, -1.0, 0.0, 0.5], [0.0, 1.5, -2.0, 0.0], [1.0, 0.0, 1.0, -1.5]]), axis=1)
    other = (best + rng.integers(1, N_ACTIONS, n)) % N_ACTIONS
    return {"observations": obs, "chosen": best.astype(np.int32), "rejected": other.astype(np.int32)}


@pytest.mark.parametrize("nll_coeff", [0.0, 0.5])
def test_dpo_update_follows_the_preference_loss(nll_coeff):
    """Two SGD steps of categorical DPO (reference: the policy at construction) equal numpy's,
    with and without the NLL term; the DPO term alone moves the parameters."""
    beta, lr = 0.5, 1.0
    config = DPOConfig(beta=beta, nll_coeff=nll_coeff, policy="categorical")
    trainer = DPOTrainer(LinearPolicy(OBS_DIM, N_ACTIONS, rngs=nnx.Rngs(5)), optax.sgd(lr), config)
    ref = params = params_of(trainer)
    rng = np.random.default_rng(5)
    for step in range(2):
        batch = _preference_pairs(rng, 16)
        params, expected = _np_dpo_step(params, ref, batch, beta, nll_coeff, lr)
        metrics = to_float(trainer.train_step(batch))
        for key in ("loss", "reward_margin", "reward_accuracy"):
            close(metrics[key], expected[key], rtol=1e-4, atol=1e-6, what=f"step {step}: {key}")
        assert_params_close(params_of(trainer), params)
    assert params_differ(ref, params)


def test_dpo_without_nll_learns_held_out_preferences():
    """nll_coeff=0: DPO alone takes held-out preference accuracy from 0 (the reference ranks
    nothing first) to > 0.9, judged by the implicit reward computed in numpy."""
    config = DPOConfig(beta=0.5, nll_coeff=0.0, policy="categorical", log_every_n_steps=50)
    trainer = DPOTrainer(LinearPolicy(OBS_DIM, N_ACTIONS, rngs=nnx.Rngs(6)), optax.adam(0.05), config)
    ref = params_of(trainer)
    rng = np.random.default_rng(6)
    train = [_preference_pairs(rng, 64) for _ in range(100)]
    heldout = _preference_pairs(rng, 512)

    def heldout_accuracy(params):
        x = heldout["observations"].astype(np.float64)
        logp = log_softmax(x @ params["pi/kernel"] + params["pi/bias"])
        ref_logp = log_softmax(x @ ref["pi/kernel"] + ref["pi/bias"])
        c, r = heldout["chosen"], heldout["rejected"]
        margin = (take(logp, c) - take(ref_logp, c)) - (take(logp, r) - take(ref_logp, r))
        return float(np.mean(margin > 0))

    assert heldout_accuracy(ref) == 0.0
    trainer.fit(train, max_epochs=1)
    assert trainer.global_step == 100
    assert heldout_accuracy(params_of(trainer)) > 0.9


# --------------------------------------------------------------------------- #
# Gaussian policies (never trained anywhere else)
# --------------------------------------------------------------------------- #

ACT_DIM = 2


def np_gae(rewards, values, dones, gamma, lam):
    """``A_t = sum_k (gamma lam)^k delta_{t+k}`` until the episode ends (forward sums),
    ``delta_t = r_t + gamma V_{t+1} (1 - done_t) - V_t``; ``values`` has ``T + 1`` entries."""
    t_max = len(rewards)
    delta = rewards + gamma * values[1:] * (1 - dones) - values[:-1]
    out = np.zeros(t_max)
    for t in range(t_max):
        discount = 1.0
        for k in range(t, t_max):
            out[t] += discount * delta[k]
            if dones[k]:
                break
            discount *= gamma * lam
    return out


def test_ppo_gaussian_step_matches_numpy():
    """One PPO step with policy="gaussian" on an actor-critic returning ((mean, log_std), value):
    the clipped surrogate with diagonal-Gaussian log-probs, value loss and entropy match
    numpy, and so do the parameters after the SGD update."""
    gamma, lam, eps, vf, ent, lr, t_max = 0.9, 0.8, 0.2, 0.5, 0.01, 0.1, 8
    config = PPOConfig(gamma=gamma, gae_lambda=lam, clip_param=eps, vf_coeff=vf, entropy_coeff=ent, update_epochs=1,
                       num_minibatches=1, clip_value_loss=False, max_grad_norm=None, policy="gaussian")
    trainer = PPOTrainer(GaussianActorCritic(OBS_DIM, ACT_DIM, rngs=nnx.Rngs(7)), optax.sgd(lr), config)
    start = params_of(trainer)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(t_max, OBS_DIM))
    (w, b), log_std = layer(start, "pi"), start["log_std"]
    mean = x @ w + b
    actions = mean + np.exp(log_std) * rng.normal(size=(t_max, ACT_DIM))
    logp, d_mean, d_log_std = gaussian_log_prob(mean, log_std, actions)
    old = logp + rng.normal(scale=0.3, size=t_max)
    values = rng.normal(size=t_max + 1)
    rewards, dones = rng.normal(size=t_max), (rng.random(t_max) < 0.3).astype(np.float64)
    batch = {"observations": x.astype(np.float32), "actions": actions.astype(np.float32),
             "rewards": rewards.astype(np.float32), "values": values.astype(np.float32),
             "log_probs": old.astype(np.float32), "dones": dones.astype(np.float32)}
    values = batch["values"].astype(np.float64)
    advantages = np_gae(batch["rewards"].astype(np.float64), values, dones, gamma, lam)
    returns = advantages + values[:-1]
    old = batch["log_probs"].astype(np.float64)
    surrogate, d_logp = clipped_surrogate(logp, old, standardize(advantages), eps)
    wv, bv = layer(start, "v")
    value = (x @ wv + bv)[:, 0]
    policy_loss, value_loss = surrogate.mean(), 0.5 * np.mean((value - returns) ** 2)
    entropy = gaussian_entropy(log_std)
    approx_kl, clip_fraction = ratio_diagnostics(logp, old, eps)

    metrics = to_float(trainer.train_step(batch))
    close(metrics["policy_loss"], policy_loss, what="policy_loss")
    close(metrics["value_loss"], value_loss, what="value_loss")
    close(metrics["entropy"], entropy, what="entropy")
    close(metrics["loss"], policy_loss + vf * value_loss - ent * entropy, what="loss")
    close(metrics["approx_kl"], approx_kl, rtol=1e-4, what="approx_kl")
    close(metrics["clip_fraction"], clip_fraction, what="clip_fraction")
    assert 0 < clip_fraction < 1  # both branches of the clip are exercised

    g_logp = d_logp / t_max
    g_mean = g_logp[:, None] * d_mean
    g_value = vf * (value - returns) / t_max
    expected = {
        "pi/kernel": w - lr * x.T @ g_mean,
        "pi/bias": b - lr * g_mean.sum(axis=0),
        "log_std": log_std - lr * ((g_logp[:, None] * d_log_std).sum(axis=0) - ent),
        "v/kernel": wv - lr * x.T @ g_value[:, None],
        "v/bias": bv - lr * g_value.sum(keepdims=True),
    }
    assert_params_close(params_of(trainer), expected, rtol=1e-4, atol=1e-6)


def test_reinforce_gaussian_step_matches_numpy():
    """One REINFORCE step with policy="gaussian": loss -mean(log pi(a|s) G_hat) - c H and
    the SGD update match numpy."""
    gamma, ent, lr, t_max = 0.9, 0.05, 0.1, 8
    config = REINFORCEConfig(gamma=gamma, normalize_returns=True, entropy_coeff=ent, policy="gaussian")
    trainer = REINFORCETrainer(GaussianPolicyNet(OBS_DIM, ACT_DIM, rngs=nnx.Rngs(8)), optax.sgd(lr), config)
    start = params_of(trainer)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(t_max, OBS_DIM))
    (w, b), log_std = layer(start, "pi"), start["log_std"]
    mean = x @ w + b
    actions = (mean + np.exp(log_std) * rng.normal(size=(t_max, ACT_DIM))).astype(np.float32)
    rewards, dones = rng.normal(size=t_max).astype(np.float32), (rng.random(t_max) < 0.3).astype(np.float32)
    # The last episode ends at the window's end: every step's episode is whole
    # (REINFORCE leaves out steps of an episode still running at the window's end).
    dones[-1] = 1.0
    batch = {"observations": x.astype(np.float32), "actions": actions, "rewards": rewards, "dones": dones}
    logp, d_mean, d_log_std = gaussian_log_prob(mean, log_std, actions.astype(np.float64))
    scaled = standardize(discounted_returns(rewards, dones, gamma))
    entropy = gaussian_entropy(log_std)
    policy_loss = -np.mean(logp * scaled)

    metrics = to_float(trainer.train_step(batch))
    close(metrics["policy_loss"], policy_loss, what="policy_loss")
    close(metrics["entropy"], entropy, what="entropy")
    close(metrics["loss"], policy_loss - ent * entropy, what="loss")

    g_logp = -scaled / t_max
    g_mean = g_logp[:, None] * d_mean
    expected = {
        "pi/kernel": w - lr * x.T @ g_mean,
        "pi/bias": b - lr * g_mean.sum(axis=0),
        "log_std": log_std - lr * ((g_logp[:, None] * d_log_std).sum(axis=0) - ent),
    }
    assert_params_close(params_of(trainer), expected, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- #
# The CLI's --wandb-mode (mutation wandb_cli_ignored)
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_cli_wandb_mode_offline_writes_a_run_and_disabled_writes_none(tmp_path, monkeypatch):
    """``artifex-rl train ... --wandb-mode offline`` leaves a W&B offline run (with its
    transaction log) in the run directory; the default (disabled) leaves no W&B files.
    About 25 s, most of it W&B's own start-up."""
    from artifex_rl.cli import main

    monkeypatch.delenv("WANDB_MODE", raising=False)  # the flag alone must decide
    monkeypatch.setenv("WANDB_SILENT", "true")
    common = ["train", "cartpole-reinforce", "--total-timesteps", "512", "--num-envs", "2",
              "--steps-per-execution", "1", "--log-every", "1", "--no-progress"]
    offline, disabled = tmp_path / "offline", tmp_path / "disabled"
    assert main([*common, "--run-dir", str(offline), "--wandb-mode", "offline"]) == 0
    assert main([*common, "--run-dir", str(disabled)]) == 0

    runs = glob.glob(os.path.join(offline, "wandb", "offline-run-*"))
    assert len(runs) == 1, os.listdir(offline)
    (log,) = glob.glob(os.path.join(runs[0], "run-*.wandb"))
    assert os.path.getsize(log) > 0
    steps = [json.loads(line)["step"] for line in (offline / "metrics.jsonl").read_text().splitlines()]
    assert steps  # the run logged metrics, which the W&B callback received too
    assert not glob.glob(os.path.join(disabled, "**", "*wandb*"), recursive=True)
