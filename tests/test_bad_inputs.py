"""Malformed batches and configs, table-driven: each raises a known type with a message naming the key.

Covers every case of the newcomer trial's section 5 (shared/reviews/newcomer-trial.md):
out-of-range categorical actions and token ids, a Gaussian or actor-critic model
under the default policy, GRPO's 8 observation rows for 32 samples, degenerate
configs; the generative trainers' rows live in ``tests/_bad_generative.py``.
Most errors are raised on the host or while tracing, before anything compiles,
so the table is cheap.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl import TrainerConfig
from artifex_rl.autoregressive import AutoregressiveTrainer
from artifex_rl.rl import (
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    PPOConfig,
    PPOTrainer,
    REINFORCEConfig,
    REINFORCETrainer,
)
from tests._bad_generative import GENERATIVE_CASES
from tests._lm_models import CurrentTokenLM

OBS, ACTIONS, T, VOCAB = 4, 2, 16, 12


class Logits(nnx.Module):
    """``(N, OBS) -> (N, ACTIONS)`` logits."""

    def __init__(self):
        self.lin = nnx.Linear(OBS, ACTIONS, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.lin(x)


class Gaussian(nnx.Module):
    """``(N, OBS) -> (mean, log_std)``, each ``(N, 2)``."""

    def __init__(self):
        self.lin = nnx.Linear(OBS, 2, rngs=nnx.Rngs(0))

    def __call__(self, x):
        mean = self.lin(x)
        return mean, jnp.zeros_like(mean)


class ActorCritic(nnx.Module):
    """``(N, OBS) -> (logits (N, ACTIONS), value (N,))``; ``gaussian=True``: ``((mean, log_std), value)``."""

    def __init__(self, gaussian: bool = False):
        self.gaussian = gaussian
        self.pi = nnx.Linear(OBS, ACTIONS, rngs=nnx.Rngs(0))
        self.v = nnx.Linear(OBS, 1, rngs=nnx.Rngs(1))

    def __call__(self, x):
        out = self.pi(x)
        if self.gaussian:
            out = (out, jnp.zeros_like(out))
        return out, self.v(x)[:, 0]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _override(batch, over):
    """``batch`` updated with ``over``; a key given as ``None`` is removed (a missing-key case)."""
    return {k: v for k, v in {**batch, **over}.items() if v is not None}


def reinforce_batch(**over):
    r = _rng()
    batch = {
        "observations": r.normal(size=(T, OBS)).astype(np.float32),
        "actions": r.integers(0, ACTIONS, T).astype(np.int32),
        "rewards": r.normal(size=T).astype(np.float32),
    }
    return _override(batch, over)


def ppo_batch(**over):
    batch = reinforce_batch()
    batch.update(log_probs=np.full(T, -0.7, np.float32), values=np.zeros(T, np.float32), dones=np.zeros(T, np.float32))
    return _override(batch, over)


def grpo_batch(n=32, g=4, **over):
    r = _rng()
    batch = {
        "observations": r.normal(size=(n, OBS)).astype(np.float32),
        "actions": r.integers(0, ACTIONS, n).astype(np.int32),
        "rewards": r.normal(size=n).astype(np.float32),
        "group_size": g,
    }
    return _override(batch, over)


def grpo_token_batch(**over):
    r = _rng()
    batch = {
        "observations": r.integers(0, VOCAB, (8, 3)).astype(np.int32),
        "actions": r.integers(0, VOCAB, (8, 5)).astype(np.int32),
        "rewards": r.normal(size=8).astype(np.float32),
        "group_size": 4,
    }
    return _override(batch, over)


def dpo_batch(**over):
    r = _rng()
    batch = {
        "prompts": r.integers(0, VOCAB, (8, 3)).astype(np.int32),
        "chosen": r.integers(0, VOCAB, (8, 3)).astype(np.int32),
        "rejected": r.integers(0, VOCAB, (8, 3)).astype(np.int32),
    }
    return _override(batch, over)


def _with(arr, index, value):
    arr = np.array(arr)
    arr[index] = value
    return arr


def reinforce(model=None, **cfg):
    return REINFORCETrainer(model or Logits(), optax.sgd(0.01), REINFORCEConfig(**cfg))


def ppo(model=None, **cfg):
    return PPOTrainer(model or ActorCritic(), optax.sgd(0.01), PPOConfig(**cfg))


def grpo(model=None, reference_model="copy", **cfg):
    cfg.setdefault("num_generations", 4)
    return GRPOTrainer(model or Logits(), optax.sgd(0.01), GRPOConfig(**cfg), reference_model=reference_model)


def dpo(model=None, reference_model="copy", **cfg):
    model = model or CurrentTokenLM(VOCAB, rngs=nnx.Rngs(0))
    return DPOTrainer(model, optax.sgd(0.01), DPOConfig(**cfg), reference_model=reference_model)


def lm():
    return CurrentTokenLM(VOCAB, rngs=nnx.Rngs(0))


def _obs_rows(n):
    return _rng().normal(size=(n, OBS)).astype(np.float32)


def _tok(shape, high=VOCAB):
    return _rng(1).integers(0, high, shape).astype(np.int32)


# (id, thunk, exception type, regex the message must match: the offending key or field)
CASES = [
    # ---------------------------------------------------------------- configs
    ("reinforce_gamma_1.5", lambda: REINFORCEConfig(gamma=1.5), ValueError, r"gamma"),
    ("reinforce_unknown_policy", lambda: REINFORCEConfig(policy="softmax"), ValueError, r"policy"),
    ("ppo_gae_lambda_negative", lambda: PPOConfig(gae_lambda=-1.0), ValueError, r"gae_lambda"),
    ("ppo_clip_zero", lambda: PPOConfig(clip_param=0.0), ValueError, r"clip_param"),
    ("ppo_clip_negative", lambda: PPOConfig(clip_param=-0.2), ValueError, r"clip_param"),
    ("grpo_clip_zero", lambda: GRPOConfig(clip_param=0.0), ValueError, r"clip_param"),
    ("grpo_num_generations_1", lambda: GRPOConfig(num_generations=1), ValueError, r"num_generations"),
    ("grpo_negative_beta", lambda: GRPOConfig(beta=-0.1), ValueError, r"beta"),
    ("grpo_unknown_loss_type", lambda: GRPOConfig(loss_type="ppo"), ValueError, r"loss_type"),
    ("grpo_temperature_zero", lambda: grpo(temperature=0.0), ValueError, r"temperature"),
    ("grpo_top_k", lambda: grpo(top_k=5), ValueError, r"top_k"),
    ("dpo_beta_zero", lambda: DPOConfig(beta=0.0), ValueError, r"beta"),
    ("ipo_beta_zero", lambda: DPOConfig(loss_type="ipo", beta=0.0), ValueError, r"beta.*IPO"),
    ("simpo_with_dpo_beta", lambda: DPOConfig(reference_free=True, beta=0.1), UserWarning, r"beta"),
    ("dpo_label_smoothing", lambda: DPOConfig(label_smoothing=1.5), ValueError, r"label_smoothing"),
    ("nan_policy_unknown", lambda: TrainerConfig(nan_policy="ignore"), ValueError, r"nan_policy"),
    # ------------------------------------------------------------- REINFORCE
    ("reinforce_missing_actions", lambda: reinforce().train_step(reinforce_batch(actions=None)), KeyError, r"actions"),
    ("reinforce_actions_63_vs_64", lambda: reinforce().train_step(
        reinforce_batch(actions=np.zeros(T - 1, np.int32))), ValueError, r"actions"),
    ("reinforce_obs_leading", lambda: reinforce().train_step(
        reinforce_batch(observations=_obs_rows(T - 2))), ValueError, r"observations"),
    ("reinforce_action_7_of_2", lambda: reinforce().train_step(
        reinforce_batch(actions=_with(reinforce_batch()["actions"], 3, 7))), ValueError, r"actions.*7.*num_actions=2"),
    ("reinforce_action_negative", lambda: reinforce().train_step(
        reinforce_batch(actions=_with(reinforce_batch()["actions"], 0, -1))), ValueError, r"actions.*-1"),
    ("reinforce_float_actions", lambda: reinforce().train_step(
        reinforce_batch(actions=reinforce_batch()["actions"].astype(np.float32))), TypeError,
     r"needs integer actions \(an integer dtype such as int32\), got actions of dtype float32"),
    ("reinforce_float_device_actions", lambda: reinforce().train_step(
        {**reinforce_batch(), "actions": jnp.asarray(reinforce_batch()["actions"], jnp.float32)}), TypeError,
     r"integer actions.*int32.*dtype float32"),
    ("reinforce_auto_policy_logits_float_actions", lambda: reinforce(policy="auto").train_step(
        reinforce_batch(actions=reinforce_batch()["actions"].astype(np.float64))), TypeError,
     r"categorical policy needs integer actions.*dtype float"),
    ("reinforce_nan_reward", lambda: reinforce().train_step(
        reinforce_batch(rewards=_with(reinforce_batch()["rewards"], 2, np.nan))), ValueError, r"rewards"),
    ("reinforce_rewards_3d", lambda: reinforce().train_step(
        reinforce_batch(rewards=np.zeros((2, 2, 4), np.float32))), ValueError, r"rewards"),
    ("reinforce_dones_shape", lambda: reinforce().train_step(
        reinforce_batch(dones=np.zeros(T - 1, np.float32))), ValueError, r"dones"),
    ("reinforce_mask_shape", lambda: reinforce().train_step(
        reinforce_batch(mask=np.ones((T, 2), np.float32))), ValueError, r"mask"),
    ("reinforce_gaussian_model_default_policy", lambda: reinforce(Gaussian()).train_step(
        reinforce_batch()), TypeError, r"policy='gaussian'"),
    ("reinforce_actor_critic_model", lambda: reinforce(ActorCritic()).train_step(
        reinforce_batch()), TypeError, r"actor-critic"),
    ("reinforce_tokens_id_50_vocab_12", lambda: reinforce(lm(), policy="tokens").train_step(
        {"observations": _tok((8, 3)), "actions": _with(_tok((8, 4)), (1, 2), 50), "rewards": np.ones(8, np.float32)}),
        ValueError, r"actions.*50.*vocab=12"),
    ("reinforce_tokens_completion_mask", lambda: reinforce(lm(), policy="tokens").train_step(
        {"observations": _tok((8, 3)), "actions": _tok((8, 4)), "rewards": np.ones(8, np.float32),
         "completion_mask": np.ones((8, 5), np.float32)}), ValueError, r"completion_mask"),
    # ------------------------------------------------------------------- PPO
    ("ppo_missing_values", lambda: ppo().train_step(ppo_batch(values=None)), KeyError, r"values"),
    ("ppo_values_shape", lambda: ppo().train_step(
        ppo_batch(values=np.zeros(T + 3, np.float32))), ValueError, r"values"),
    ("ppo_log_probs_shape", lambda: ppo().train_step(
        ppo_batch(log_probs=np.zeros((T, 2), np.float32))), ValueError, r"log_probs"),
    ("ppo_action_7_of_2", lambda: ppo().train_step(
        ppo_batch(actions=_with(ppo_batch()["actions"], 5, 7))), ValueError, r"actions.*num_actions=2"),
    ("ppo_float_actions", lambda: ppo().train_step(
        ppo_batch(actions=ppo_batch()["actions"].astype(np.float32))), TypeError, r"integer actions.*dtype float32"),
    ("ppo_obs_leading", lambda: ppo().train_step(ppo_batch(observations=_obs_rows(8))), ValueError, r"observations"),
    ("ppo_policy_only_model", lambda: ppo(Logits()).train_step(ppo_batch()), TypeError, r"value"),
    ("ppo_gaussian_policy_only_model", lambda: ppo(Gaussian()).train_step(ppo_batch()), TypeError, r"value"),
    ("ppo_gaussian_actor_critic_default_policy", lambda: ppo(ActorCritic(gaussian=True)).train_step(
        ppo_batch()), TypeError, r"policy='gaussian'"),
    ("ppo_logits_with_gaussian_policy", lambda: ppo(policy="gaussian").train_step(
        ppo_batch(actions=np.zeros((T, 2), np.float32))), TypeError, r"policy='categorical'"),
    ("ppo_minibatches_not_dividing", lambda: ppo(num_minibatches=3).train_step(ppo_batch()), ValueError,
     r"minibatch"),
    # ------------------------------------------------------------------ GRPO
    ("grpo_8_obs_rows_for_32_samples", lambda: grpo().train_step(
        grpo_batch(observations=_obs_rows(8))), ValueError, r"observations.*\(8, 4\)"),
    ("grpo_actions_leading", lambda: grpo().train_step(
        grpo_batch(actions=np.zeros(8, np.int32))), ValueError, r"actions"),
    ("grpo_30_samples_group_4", lambda: grpo().train_step(grpo_batch(
        n=30)), ValueError, r"group_size=4"),
    ("grpo_rewards_column", lambda: grpo().train_step(
        grpo_batch(rewards=np.zeros((32, 1), np.float32))), ValueError, r"rewards"),
    ("grpo_group_size_float", lambda: grpo().train_step(grpo_batch(g=4.0)), TypeError, r"group_size"),
    ("grpo_action_7_of_2", lambda: grpo().train_step(
        grpo_batch(actions=_with(grpo_batch()["actions"], 0, 7))), ValueError, r"actions.*num_actions=2"),
    ("grpo_float_actions", lambda: grpo(policy="categorical").train_step(
        grpo_batch(actions=grpo_batch()["actions"].astype(np.float32))), TypeError, r"integer actions.*dtype float32"),
    ("grpo_token_negative", lambda: grpo(lm(), beta=0.0).train_step(
        grpo_token_batch(actions=_with(_tok((8, 5)), (0, 0), -1))), ValueError, r"actions.*-1"),
    ("grpo_token_50_vocab_12", lambda: grpo(lm(), beta=0.0).train_step(
        grpo_token_batch(observations=_with(_tok((8, 3)), (2, 1), 50))), ValueError, r"observations.*50"),
    ("grpo_log_probs_shape", lambda: grpo(lm(), beta=0.0).train_step(
        grpo_token_batch(log_probs=np.zeros((8, 4), np.float32))), ValueError, r"log_probs"),
    ("grpo_beta_without_reference", lambda: grpo(lm(), reference_model=None, beta=0.1).train_step(
        grpo_token_batch()), ValueError, r"beta.*ref_log_probs"),
    ("grpo_no_rewards_no_reward_fn", lambda: grpo(lm()).train_step(
        {"observations": _tok((2, 3))}), ValueError, r"reward_fn"),
    ("grpo_gaussian_model_categorical", lambda: grpo(Gaussian(), policy="categorical").train_step(
        grpo_batch()), TypeError, r"policy='gaussian'"),
    # ------------------------------------------------------------------- DPO
    ("dpo_token_50_vocab_12", lambda: dpo().train_step(
        dpo_batch(chosen=_with(_tok((8, 3)), (4, 0), 50))), ValueError, r"chosen.*50.*vocab=12"),
    ("dpo_token_negative", lambda: dpo().train_step(
        dpo_batch(rejected=_with(_tok((8, 3)), (0, 2), -1))), ValueError, r"rejected.*-1"),
    ("dpo_prompt_token_out_of_range", lambda: dpo().train_step(
        dpo_batch(prompts=_with(_tok((8, 3)), (0, 0), 12))), ValueError, r"observations.*12"),
    ("dpo_rejected_fewer_pairs", lambda: dpo().train_step(dpo_batch(rejected=_tok((6, 3)))), ValueError,
     r"rejected"),
    ("dpo_rejected_longer", lambda: dpo().train_step(dpo_batch(rejected=_tok((8, 5)))), ValueError, r"rejected"),
    ("dpo_prompts_fewer_rows", lambda: dpo().train_step(dpo_batch(prompts=_tok((6, 3)))), ValueError, r"prompts"),
    ("dpo_log_probs_only", lambda: dpo().train_step(
        {"prompts": _tok((8, 3)), "chosen_log_probs": np.zeros(8, np.float32),
         "rejected_log_probs": np.zeros(8, np.float32)}), ValueError, r"chosen_log_probs"),
    ("dpo_missing_rejected", lambda: dpo().train_step(dpo_batch(rejected=None)), KeyError, r"rejected"),
    ("dpo_chosen_mask_shape", lambda: dpo().train_step(
        dpo_batch(chosen_mask=np.ones((8, 4), np.float32))), ValueError, r"chosen_mask"),
    ("dpo_no_reference", lambda: dpo(reference_model=None).train_step(dpo_batch()), ValueError,
     r"ref_chosen_log_probs"),
    ("dpo_categorical_gaussian_model", lambda: dpo(Gaussian()).train_step(
        {"observations": _obs_rows(8), "chosen": np.zeros(8, np.int32), "rejected": np.ones(8, np.int32)}),
        TypeError, r"policy='gaussian'"),
    ("dpo_categorical_float_chosen", lambda: dpo(Logits(), policy="categorical").train_step(
        {"observations": _obs_rows(8), "chosen": np.zeros(8, np.float32), "rejected": np.ones(8, np.int32)}),
        TypeError, r"integer actions.*dtype float32"),
    ("dpo_categorical_obs_rows", lambda: dpo(Logits()).train_step(
        {"observations": _obs_rows(4), "chosen": np.zeros(8, np.int32), "rejected": np.ones(8, np.int32)}),
        ValueError, r"observations"),
    # -------------------------------------------------------- autoregressive
    ("ar_missing_loss_mask", lambda: AutoregressiveTrainer(lm(), optax.sgd(0.01)).train_step(
        {"tokens": _tok((4, 6))}), KeyError, r"loss_mask"),
    ("ar_tokens_1d", lambda: AutoregressiveTrainer(lm(), optax.sgd(0.01)).train_step(
        {"tokens": _tok((6,)), "loss_mask": np.ones(6, np.float32)}), ValueError, r"tokens"),
    ("ar_float_tokens", lambda: AutoregressiveTrainer(lm(), optax.sgd(0.01)).train_step(
        {"tokens": np.zeros((4, 6), np.float32), "loss_mask": np.ones((4, 6), np.float32)}), ValueError, r"tokens"),
    ("ar_loss_mask_shape", lambda: AutoregressiveTrainer(lm(), optax.sgd(0.01)).train_step(
        {"tokens": _tok((4, 6)), "loss_mask": np.ones((4, 5), np.float32)}), ValueError, r"loss_mask"),
    # ------------------------------------------------------------------ fit
    ("fit_empty_dataloader", lambda: reinforce().fit([], max_steps=1), ValueError, r"dataloader"),
    *GENERATIVE_CASES,
]


def test_the_table_is_large_and_its_ids_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 40


@pytest.mark.parametrize(("thunk", "kind", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_reported_with_the_offending_key(thunk, kind, pattern):
    if issubclass(kind, Warning):
        with pytest.warns(kind, match=pattern):
            thunk()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(kind, match=pattern):
            thunk()


def test_auto_policy_reads_the_model_output_for_reinforce_and_ppo():
    """``policy="auto"``: a Gaussian model trains under REINFORCE and PPO without naming the head."""
    batch = reinforce_batch(actions=_rng().normal(size=(T, 2)).astype(np.float32))
    assert np.isfinite(float(reinforce(Gaussian(), policy="auto").train_step(batch)["loss"]))
    pbatch = ppo_batch(actions=batch["actions"])
    assert np.isfinite(float(ppo(ActorCritic(gaussian=True), policy="auto").train_step(pbatch)["loss"]))


def test_auto_policy_heads():
    from artifex_rl.distributions import CategoricalPolicy, GaussianPolicy, TokenPolicy

    trainer = reinforce(policy="auto")
    logits, pair = jnp.zeros((3, 2)), (jnp.zeros((3, 2)), jnp.zeros((3, 2)))
    assert isinstance(trainer.resolve_policy(np.zeros(3, np.int32), output=logits), CategoricalPolicy)
    assert isinstance(trainer.resolve_policy(np.zeros((3, 2), np.float32), output=pair), GaussianPolicy)
    assert isinstance(trainer.resolve_policy(np.zeros((3, 4), np.int32)), TokenPolicy)
    assert isinstance(trainer.resolve_policy(np.zeros(3, np.int32)), CategoricalPolicy)
    assert isinstance(trainer.resolve_policy(tokens=True), TokenPolicy)
    assert isinstance(reinforce().resolve_policy(output=pair), CategoricalPolicy)  # a fixed head stays


def test_resolve_policy_is_pure():
    """Tracing a step with ``policy="auto"`` stores no head on the trainer."""
    trainer = reinforce(Gaussian(), policy="auto")
    trainer.train_step(reinforce_batch(actions=np.zeros((T, 2), np.float32)))
    assert trainer.policy is None


# --------------------------------------------------------------------------------------------
# Device batches are not read on the host: out-of-range actions are counted inside the step.


def _device(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _bad_actions(seed, shape=(T,)):
    """Random actions in [-2, 4) for 2 logits (some out of range) and a random 0/1 mask."""
    r = _rng(seed)
    return r.integers(-2, 4, shape).astype(np.int32), (r.uniform(size=shape) < 0.7).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_invalid_action_frac_counts_real_out_of_range_actions(seed):
    actions, mask = _bad_actions(seed)
    real = mask > 0
    want = np.mean((actions[real] < 0) | (actions[real] >= ACTIONS))
    trainer = reinforce(nan_policy="skip")
    before = np.asarray(trainer.train_state["params"]["model"]["lin"]["kernel"])
    metrics = trainer.train_step(_device(reinforce_batch(actions=actions, mask=mask)))
    assert float(metrics["invalid_action_frac"]) == pytest.approx(want)
    # The NaN log-probs of the bad actions never reach the parameters.
    assert float(metrics["skipped_step"]) == 1.0
    np.testing.assert_array_equal(np.asarray(trainer.train_state["params"]["model"]["lin"]["kernel"]), before)

    # PPO averages its metrics over minibatches: exact with one, positive whenever one is bad.
    one = ppo(nan_policy="skip", num_minibatches=1, update_epochs=1).train_step(
        _device(ppo_batch(actions=actions, mask=mask)))
    assert float(one["invalid_action_frac"]) == pytest.approx(want)
    four = ppo(nan_policy="skip", num_minibatches=4).train_step(_device(ppo_batch(actions=actions, mask=mask)))
    assert float(four["invalid_action_frac"]) > 0


def test_invalid_action_frac_is_zero_for_valid_batches_and_absent_for_gaussian_policies():
    assert float(reinforce().train_step(_device(reinforce_batch()))["invalid_action_frac"]) == 0.0
    assert float(ppo().train_step(ppo_batch())["invalid_action_frac"]) == 0.0
    gaussian = reinforce(Gaussian(), policy="gaussian").train_step(
        reinforce_batch(actions=_rng().normal(size=(T, 2)).astype(np.float32)))
    assert "invalid_action_frac" not in gaussian


def test_nan_policy_raise_names_the_invalid_action_frac_of_a_device_batch():
    actions = _with(reinforce_batch()["actions"], slice(0, 4), 7)  # 4 of 16 out of range
    trainer = reinforce(log_every_n_steps=1)
    with pytest.raises(FloatingPointError, match=r"step 1 .*invalid_action_frac=0.25"):
        trainer.train_step(_device(reinforce_batch(actions=actions)))


def test_grpo_and_dpo_count_out_of_range_actions_of_a_device_batch():
    actions = _with(grpo_batch()["actions"], slice(0, 8), 5)  # 8 of 32 outside [0, 2)
    metrics = grpo(nan_policy="skip").train_step(_device(grpo_batch(actions=actions)) | {"group_size": 4})
    assert float(metrics["invalid_action_frac"]) == pytest.approx(0.25)
    r = _rng(3)
    pairs = {"observations": r.normal(size=(8, OBS)).astype(np.float32),
             "chosen": _with(r.integers(0, ACTIONS, 8).astype(np.int32), slice(0, 2), -1),
             "rejected": r.integers(0, ACTIONS, 8).astype(np.int32)}
    trainer = DPOTrainer(Logits(), optax.sgd(0.01), DPOConfig(nan_policy="skip"), policy="categorical")
    assert float(trainer.train_step(_device(pairs))["invalid_action_frac"]) == pytest.approx(2 / 16)
