"""Behaviour guards for the update machinery: RNG stream, gradient accumulation,
PPO's epochs x minibatches, GRPO's ``num_iterations`` and KL reference.

Each test here failed under one of the small plausible bugs of
``shared/reviews/test-audit.md`` that the rest of the suite let through (named
in the test's docstring). They use only public behaviour (``train_step``,
``train_steps``, returned metrics, ``trainer.model``, configs, and
``compute_loss`` overrides, the documented extension point) so that they keep
guarding while the core is rewritten. References are float64 numpy replays of
the documented updates on linear models (see ``tests/_guard_refs.py``).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer, Trainer, TrainerConfig
from tests._guard_refs import (
    LinearActorCritic,
    LinearPolicy,
    assert_params_close,
    categorical_entropy,
    clipped_surrogate,
    close,
    d_entropy_d_logits,
    d_logp_d_logits,
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
# RNG stream: a fresh key every step (mutation rng_not_folded_with_step)
# --------------------------------------------------------------------------- #


class KeyProbeTrainer(Trainer):
    """Least squares that also reports a number drawn from the ``rng`` it is handed:
    equal probes mean equal keys."""

    def compute_loss(self, model, batch, rng):
        err = model(batch["x"]) - batch["y"]
        return jnp.mean(err**2), {"key_probe": jax.random.uniform(rng, ())}


def _probe_trainer(seed: int) -> KeyProbeTrainer:
    return KeyProbeTrainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.01), TrainerConfig(seed=seed))


def _regression_batch(rng: np.random.Generator, n: int = 8) -> dict:
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return {"x": x, "y": (x @ np.array([[1.0], [-2.0], [0.5]])).astype(np.float32)}


def test_each_step_gets_a_fresh_key_from_a_reproducible_stream():
    """compute_loss gets a different key at every step (dropout masks and sampling must not
    repeat), the fused train_steps path draws the same stream, and the stream is a
    function of the config's seed."""
    batch = _regression_batch(np.random.default_rng(0))
    stepped = _probe_trainer(seed=3)
    probes = [to_float(stepped.train_step(batch))["key_probe"] for _ in range(4)]
    assert len(set(probes)) == 4, f"the same key was handed out at several steps: {probes}"

    fused = np.asarray(_probe_trainer(seed=3).train_steps([batch] * 4)["key_probe"])
    np.testing.assert_allclose(fused, probes, rtol=0, atol=0)

    other_seed = [to_float(_probe_trainer(seed=4).train_step(batch))["key_probe"]]
    assert other_seed[0] not in probes


# --------------------------------------------------------------------------- #
# Gradient accumulation = one SGD step on the whole batch (mutation accum_sum_not_mean)
# --------------------------------------------------------------------------- #


class LeastSquares(Trainer):
    def compute_loss(self, model, batch, rng):
        return jnp.mean(jnp.square(model(batch["x"]) - batch["y"])), {}


@pytest.mark.parametrize("accum", [1, 2, 4])
def test_gradient_accumulation_is_one_sgd_step_on_the_whole_batch(accum):
    """With plain SGD (scale-sensitive, unlike Adam) the parameters and the reported
    ``grad_norm`` after each step equal numpy's full-batch gradient step, for any
    number of equal micro-batches."""
    lr = 0.1
    trainer = LeastSquares(
        nnx.Linear(3, 1, rngs=nnx.Rngs(1)), optax.sgd(lr), TrainerConfig(grad_accum_steps=accum, log_grad_norm=True)
    )
    rng = np.random.default_rng(1)
    for _ in range(2):
        batch = _regression_batch(rng, n=16)
        batch["y"] = batch["y"] + rng.normal(size=batch["y"].shape).astype(np.float32)
        params = params_of(trainer)
        w, b = params["kernel"], params["bias"]
        x = batch["x"].astype(np.float64)
        err = x @ w + b - batch["y"]
        grad_w, grad_b = 2 * x.T @ err / len(x), 2 * err.sum(axis=0) / len(x)
        metrics = to_float(trainer.train_step(batch))
        close(metrics["loss"], np.mean(err**2), what="loss")
        close(metrics["grad_norm"], np.sqrt(np.sum(grad_w**2) + np.sum(grad_b**2)), what="grad_norm")
        assert_params_close(params_of(trainer), {"kernel": w - lr * grad_w, "bias": b - lr * grad_b})


# --------------------------------------------------------------------------- #
# PPO: shuffled each epoch, advantages standardised per minibatch, metrics are the
# mean over the updates (mutations ppo_no_shuffle, ppo_normalize_whole_batch,
# update_metrics_last_only)
# --------------------------------------------------------------------------- #

N_SAMPLES, OBS_DIM, N_ACTIONS = 8, 3, 4
EPOCHS, MINIBATCHES = 3, 2
ALL_SAMPLES = (1 << N_SAMPLES) - 1
#: The half of an epoch's split that holds sample 0, as a bit set of its 4 sample ids
#: (the other half is the complement).
SPLIT_CODES = [1 + sum(1 << i for i in s) for s in itertools.combinations(range(1, N_SAMPLES), N_SAMPLES // 2 - 1)]
PPO_LR, PPO_EPS, PPO_VF, PPO_ENT = 0.5, 0.2, 0.5, 0.01
ID_SCALE = 0.25  # observation column 0 carries the sample id, scaled


class MinibatchProbe(PPOTrainer):
    """PPO that also reports which samples each update saw: one 0/1 metric per possible
    minibatch holding sample 0, so the update-averaged metrics count how often each
    split of the batch into two halves was used."""

    def compute_loss(self, model, batch, rng):
        loss, metrics = super().compute_loss(model, batch, rng)
        obs = batch["observations"] if "observations" in batch else batch["states"]
        ids = jnp.round(obs[:, 0] / ID_SCALE).astype(jnp.int32)
        code = jnp.sum(jnp.left_shift(1, ids))
        probes = {f"split_{c}": (code == c).astype(jnp.float32) for c in SPLIT_CODES}
        return loss, {**metrics, **probes}


def _ppo_batch(model_params: dict, rng: np.random.Generator) -> dict:
    obs = rng.normal(size=(N_SAMPLES, OBS_DIM))
    obs[:, 0] = np.arange(N_SAMPLES) * ID_SCALE
    w, b = layer(model_params, "pi")
    logp = log_softmax(obs @ w + b)
    actions = rng.integers(0, N_ACTIONS, N_SAMPLES)
    return {
        "observations": obs.astype(np.float32),
        "actions": actions.astype(np.int32),
        "rewards": rng.normal(size=N_SAMPLES).astype(np.float32),
        "values": rng.normal(size=N_SAMPLES).astype(np.float32),
        "log_probs": (take(logp, actions) + rng.normal(scale=0.3, size=N_SAMPLES)).astype(np.float32),
        "dones": np.ones(N_SAMPLES, np.float32),  # one-step episodes: A = r - V, returns = r
    }


def _np_ppo_update(params: dict, batch: dict, idx: np.ndarray) -> tuple[dict, dict]:
    """One documented PPO update on minibatch ``idx`` (advantages standardised within it),
    plain SGD; returns the new parameters and the update's metrics (at the old ones)."""
    x = batch["observations"][idx].astype(np.float64)
    actions, old = batch["actions"][idx], batch["log_probs"][idx].astype(np.float64)
    returns = batch["rewards"][idx].astype(np.float64)
    adv = standardize(returns - batch["values"][idx])
    m = len(idx)
    (w, b), (wv, bv) = layer(params, "pi"), layer(params, "v")
    logp_all = log_softmax(x @ w + b)
    logp = take(logp_all, actions)
    value = (x @ wv + bv)[:, 0]
    surrogate, d_logp = clipped_surrogate(logp, old, adv, PPO_EPS)
    entropy = categorical_entropy(logp_all)
    d_logits = (d_logp[:, None] * d_logp_d_logits(logp_all, actions) - PPO_ENT * d_entropy_d_logits(logp_all)) / m
    d_value = PPO_VF * (value - returns) / m
    new = {
        "pi/kernel": w - PPO_LR * x.T @ d_logits,
        "pi/bias": b - PPO_LR * d_logits.sum(axis=0),
        "v/kernel": wv - PPO_LR * x.T @ d_value[:, None],
        "v/bias": bv - PPO_LR * d_value.sum(keepdims=True),
    }
    policy_loss, value_loss = surrogate.mean(), 0.5 * np.mean((value - returns) ** 2)
    approx_kl, clip_fraction = ratio_diagnostics(logp, old, PPO_EPS)
    metrics = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy.mean(),
        "loss": policy_loss + PPO_VF * value_loss - PPO_ENT * entropy.mean(),
        "approx_kl": approx_kl,
        "clip_fraction": clip_fraction,
    }
    return new, metrics


def _ids(code: int) -> np.ndarray:
    return np.array([i for i in range(N_SAMPLES) if code >> i & 1])


def test_ppo_reshuffles_each_epoch_standardises_per_minibatch_and_averages_metrics():
    """A 3-epoch x 2-minibatch PPO step, replayed in numpy.

    The probe metrics say how the step split the batch in each epoch; some order of those
    minibatches, each an SGD update with advantages standardised within the
    minibatch, must reproduce the trainer's parameters, and the returned metrics
    must be the mean over the 6 updates. The epochs must not all use the
    unshuffled halves, nor all the same split (the batch is reshuffled per epoch).
    """
    config = PPOConfig(
        clip_param=PPO_EPS, vf_coeff=PPO_VF, entropy_coeff=PPO_ENT, update_epochs=EPOCHS,
        num_minibatches=MINIBATCHES, clip_value_loss=False, max_grad_norm=None,
    )
    trainer = MinibatchProbe(LinearActorCritic(OBS_DIM, N_ACTIONS, rngs=nnx.Rngs(2)), optax.sgd(PPO_LR), config)
    start = params_of(trainer)
    batch = _ppo_batch(start, np.random.default_rng(2))
    metrics = to_float(trainer.train_step(batch))
    after = params_of(trainer)

    # Each epoch has exactly one update whose minibatch holds sample 0.
    counts = {c: metrics[f"split_{c}"] * EPOCHS * MINIBATCHES for c in SPLIT_CODES}
    for c, n in counts.items():
        assert abs(n - round(n)) < 1e-4, f"update-averaged probe split_{c} is {n} / {EPOCHS * MINIBATCHES}"
    assert sum(round(n) for n in counts.values()) == EPOCHS, (
        f"expected one minibatch of 4 holding sample 0 per epoch; probe counts {counts}"
    )
    splits = [c for c in SPLIT_CODES for _ in range(round(counts[c]))]

    unshuffled = 0b00001111  # samples 0-3 first, 4-7 second
    assert splits != [unshuffled] * EPOCHS, "minibatches are the batch's halves in order: no shuffling"
    assert len(set(splits)) > 1, f"every epoch used the same split {splits}: the batch is not reshuffled"

    matches, errors = [], []
    for order in set(itertools.permutations(splits)):
        for flips in itertools.product((False, True), repeat=EPOCHS):
            params, per_update = dict(start), []
            for split, flip in zip(order, flips, strict=True):
                for code in ((ALL_SAMPLES ^ split, split) if flip else (split, ALL_SAMPLES ^ split)):
                    params, m = _np_ppo_update(params, batch, _ids(code))
                    per_update.append(m)
            err = max(np.max(np.abs(params[k] - after[k])) for k in after)
            errors.append(err)
            if err < 1e-5:
                matches.append(per_update)
    assert matches, (
        "no order of the step's minibatches, updated with per-minibatch advantage standardisation, "
        f"gives the trainer's parameters (closest max error {min(errors):.2e})"
    )
    assert params_differ(start, after)
    per_update = matches[0]
    for key in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"):
        expected = np.mean([m[key] for m in per_update])
        close(metrics[key], expected, rtol=1e-4, atol=1e-6, what=f"{key}: not the mean over the 6 updates")
    assert np.std([m["policy_loss"] for m in per_update]) > 1e-3  # so "mean" and "last" differ
    assert metrics["clip_fraction"] > 0  # later updates left the trust region: the clip is exercised


# --------------------------------------------------------------------------- #
# GRPO: num_iterations updates per batch (mutation grpo_ignores_num_iterations)
# and the KL to a frozen reference (mutation grpo_kl_ref_is_policy)
# --------------------------------------------------------------------------- #

GROUP = 4


def _grpo_batch(rng: np.random.Generator, n_prompts: int = 2) -> dict:
    obs = np.repeat(rng.normal(size=(n_prompts, OBS_DIM)), GROUP, axis=0).astype(np.float32)
    return {
        "observations": obs,
        "actions": rng.integers(0, N_ACTIONS, len(obs)).astype(np.int32),
        "rewards": rng.normal(size=len(obs)).astype(np.float32),
    }


def _np_grpo_categorical_update(params, batch, old_logp, adv, lr, eps):
    """One GRPO update of a categorical policy (one "token" per sample, beta = 0, no entropy)."""
    x = batch["observations"].astype(np.float64)
    w, b = layer(params, "pi")
    logp_all = log_softmax(x @ w + b)
    logp = take(logp_all, batch["actions"])
    surrogate, d_logp = clipped_surrogate(logp, old_logp, adv, eps)
    d_logits = d_logp[:, None] * d_logp_d_logits(logp_all, batch["actions"]) / len(x)
    new = {"pi/kernel": w - lr * x.T @ d_logits, "pi/bias": b - lr * d_logits.sum(axis=0)}
    approx_kl, clip_fraction = ratio_diagnostics(logp, old_logp, eps)
    return new, {"loss": surrogate.mean(), "approx_kl": approx_kl, "clip_fraction": clip_fraction}


def test_grpo_num_iterations_updates_each_batch_that_many_times():
    """num_iterations=2: two SGD updates on one batch; the second one's ratio is taken
    against the policy that generated the batch (so it is not 1), and the metrics are
    the mean over both updates."""
    lr, eps = 2.0, 0.2
    config = GRPOConfig(num_generations=GROUP, num_iterations=2, beta=0.0, entropy_coeff=0.0, clip_param=eps,
                        policy="categorical")
    trainer = GRPOTrainer(LinearPolicy(OBS_DIM, N_ACTIONS, rngs=nnx.Rngs(3)), optax.sgd(lr), config,
                          reference_model=None)
    batch = _grpo_batch(np.random.default_rng(3))  # no log_probs: generated by the current policy
    start = params_of(trainer)
    w, b = layer(start, "pi")
    old = take(log_softmax(batch["observations"] @ w + b), batch["actions"])
    adv = group_advantages(batch["rewards"], GROUP)
    first, m1 = _np_grpo_categorical_update(start, batch, old, adv, lr, eps)
    second, m2 = _np_grpo_categorical_update(first, batch, old, adv, lr, eps)

    metrics = to_float(trainer.train_step(batch))
    assert_params_close(params_of(trainer), second)
    assert m2["approx_kl"] > 1e-3 and m2["clip_fraction"] > 0
    for key in ("loss", "approx_kl", "clip_fraction"):
        close(metrics[key], (m1[key] + m2[key]) / 2, rtol=1e-4, atol=1e-6, what=key)


def test_grpo_kl_is_measured_against_the_frozen_initial_policy():
    """beta > 0 with the default reference (a frozen copy of the policy at construction):
    after the first update the KL penalty is k3(initial policy || current policy) > 0."""
    beta, lr = 0.1, 1.0
    config = GRPOConfig(num_generations=GROUP, beta=beta, entropy_coeff=0.0, policy="categorical")
    trainer = GRPOTrainer(LinearPolicy(OBS_DIM, N_ACTIONS, rngs=nnx.Rngs(4)), optax.sgd(lr), config)
    initial = params_of(trainer)
    rng = np.random.default_rng(4)
    first = to_float(trainer.train_step(_grpo_batch(rng)))
    assert abs(first["kl"]) < 1e-6  # the reference is the policy itself at step 1

    for _ in range(2):
        batch = _grpo_batch(rng)
        current = params_of(trainer)
        x = batch["observations"].astype(np.float64)
        logp = take(log_softmax(x @ current["pi/kernel"] + current["pi/bias"]), batch["actions"])
        ref = take(log_softmax(x @ initial["pi/kernel"] + initial["pi/bias"]), batch["actions"])
        d = ref - logp
        kl = np.mean(np.exp(d) - d - 1)  # k3
        adv = group_advantages(batch["rewards"], GROUP)
        metrics = to_float(trainer.train_step(batch))  # on-policy: ratio 1, surrogate -A
        assert kl > 1e-4
        close(metrics["kl"], kl, rtol=1e-4, what="kl")
        close(metrics["kl_penalty"], beta * kl, rtol=1e-4, what="kl_penalty")
        close(metrics["loss"], np.mean(-adv) + beta * kl, rtol=1e-4, atol=1e-6, what="loss")
