"""Regression tests for the core bugs of the redesign issue (each failed before its fix)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl import LossTerm, Trainer, TrainerConfig, UpdatePhase
from artifex_rl.callbacks import CheckpointConfig, ModelCheckpoint
from tests._models import RegressionTrainer, TinyMLP, make_two_model_trainer, regression_batches


class _Linear(nnx.Module):
    def __init__(self, rngs):
        self.l1, self.l2 = nnx.Linear(2, 4, rngs=rngs), nnx.Linear(4, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


class _MSE(Trainer):
    def compute_loss(self, model, batch, rng):
        return jnp.mean((model(batch["x"]) - batch["y"]) ** 2), {}


def _pairs(n, b=4, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {"x": rng.normal(size=(b, 2)).astype(np.float32), "y": rng.normal(size=(b, 1)).astype(np.float32)}
        for _ in range(n)
    ]


def test_fused_chunk_checkpoint_at_an_epoch_end_that_is_not_a_logging_step(tmp_path):
    """Bug 1: metadata called float() on (K,) metric rows; a default ModelCheckpoint crashed."""
    trainer = _MSE(_Linear(nnx.Rngs(0)), optax.sgd(0.1), TrainerConfig(log_every_n_steps=4, steps_per_execution=2))
    trainer.fit(_pairs(6), max_epochs=1, callbacks=[ModelCheckpoint(CheckpointConfig(str(tmp_path)))])
    assert trainer.global_step == 6
    # the checkpoint at step 6 holds the open interval (steps 5-6) as (sum, count)
    fresh = _MSE(_Linear(nnx.Rngs(0)), optax.sgd(0.1), TrainerConfig(log_every_n_steps=4, steps_per_execution=2))
    from artifex_rl.checkpoint import is_complete_checkpoint

    ckpts = sorted(p for p in tmp_path.iterdir() if is_complete_checkpoint(p))
    fresh.load_checkpoint(str(ckpts[-1]))
    assert fresh.global_step == 6
    np.testing.assert_array_equal(
        fresh.train_state["params"]["model"]["l2"]["kernel"], trainer.train_state["params"]["model"]["l2"]["kernel"]
    )


def test_nnx_optimizer_wrt_trains_only_the_selected_variables():
    """Bug 2: wrt was ignored and every nnx.Param trained (LoRA became full fine-tuning)."""
    model = _Linear(nnx.Rngs(0))
    l1_before = np.array(model.l1.kernel[...])
    l2_before = np.array(model.l2.kernel[...])
    opt = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.All(nnx.Param, nnx.PathContains("l2")))
    trainer = _MSE(model, opt)
    trainer.train_step({"x": np.ones((8, 2), np.float32), "y": np.full((8, 1), 3.0, np.float32)})
    assert set(trainer.train_state["params"]["model"]) == {"l2"}
    np.testing.assert_array_equal(np.array(trainer.model.l1.kernel[...]), l1_before)
    assert not np.allclose(np.array(trainer.model.l2.kernel[...]), l2_before)


def test_gradient_accumulation_normalises_count_terms_by_the_whole_batch():
    """Bug 4: accumulation averaged per-micro-batch means; a (sum, count) loss is exact."""

    class Masked(Trainer):
        def compute_loss(self, model, batch, rng):
            err = (model(batch["x"])[:, 0] - batch["y"][:, 0]) ** 2
            mask = batch["mask"]
            return LossTerm(jnp.sum(err * mask), jnp.sum(mask)), {}

    rng = np.random.default_rng(3)
    batch = {
        "x": rng.normal(size=(8, 2)).astype(np.float32),
        "y": rng.normal(size=(8, 1)).astype(np.float32),
        # micro-batch 1 holds 4 valid items, micro-batch 2 holds 1
        "mask": np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32),
    }
    whole = Masked(_Linear(nnx.Rngs(1)), optax.sgd(0.3))
    accum = Masked(_Linear(nnx.Rngs(1)), optax.sgd(0.3), TrainerConfig(grad_accum_steps=2, log_grad_norm=True))
    m_whole = whole.train_step(batch)
    m_accum = accum.train_step(batch)
    np.testing.assert_allclose(float(m_accum["loss"]), float(m_whole["loss"]), rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        accum.train_state["params"],
        whole.train_state["params"],
    )


def test_frozen_reference_models_are_restored_from_the_checkpoint(tmp_path):
    """Bug 5: a resumed run measured KL against whatever reference the new process passed in."""
    trainer = RegressionTrainer(TinyMLP(rngs=nnx.Rngs(0)), optax.sgd(0.1))
    trainer.register_frozen_model("reference", TinyMLP(rngs=nnx.Rngs(7)))
    trainer.train_step(regression_batches(1)[0])
    path = trainer.save_checkpoint(str(tmp_path / "ckpt"))
    other = RegressionTrainer(TinyMLP(rngs=nnx.Rngs(0)), optax.sgd(0.1))
    other.register_frozen_model("reference", TinyMLP(rngs=nnx.Rngs(99)))  # a different reference
    other.load_checkpoint(path)
    jax.tree.map(np.testing.assert_array_equal, other.frozen_states, trainer.frozen_states)


def test_fit_with_max_steps_alone_runs_several_epochs():
    """Bug 9: max_epochs defaulted to 1, so fit(loader, max_steps=N) stopped after one epoch."""
    trainer = RegressionTrainer(TinyMLP(rngs=nnx.Rngs(0)), optax.sgd(0.1))
    trainer.fit(regression_batches(4), max_steps=10)
    assert trainer.global_step == 10 and trainer.current_epoch == 2
    # neither given: one epoch (documented default)
    fresh = RegressionTrainer(TinyMLP(rngs=nnx.Rngs(0)), optax.sgd(0.1))
    fresh.fit(regression_batches(4))
    assert fresh.global_step == 4 and fresh.current_epoch == 1


def test_resume_with_a_larger_max_steps_continues_training(tmp_path):
    """Bug 9 (second half): fit(..., max_steps=more, ckpt_path=...) after a first fit trained nothing."""
    trainer = RegressionTrainer(TinyMLP(rngs=nnx.Rngs(0)), optax.sgd(0.1))
    ckpt = ModelCheckpoint(CheckpointConfig(str(tmp_path), every_n_train_steps=4))
    trainer.fit(regression_batches(4), max_steps=8, callbacks=[ckpt])
    fresh = RegressionTrainer(TinyMLP(rngs=nnx.Rngs(0)), optax.sgd(0.1))
    fresh.fit(regression_batches(4), max_steps=16, callbacks=[ModelCheckpoint(CheckpointConfig(str(tmp_path)))], ckpt_path="last")
    assert fresh.global_step == 16


def test_ckpt_path_last_without_a_checkpoint_warns_and_starts_fresh(tmp_path, caplog):
    trainer = RegressionTrainer(TinyMLP(rngs=nnx.Rngs(0)), optax.sgd(0.1))
    with caplog.at_level("WARNING"):
        trainer.fit(regression_batches(2), max_steps=2, callbacks=[ModelCheckpoint(CheckpointConfig(str(tmp_path)))],
                    ckpt_path="last")
    assert trainer.global_step == 2
    assert "no checkpoint found" in caplog.text


def test_phases_update_only_their_models_and_repeats_count():
    trainer = make_two_model_trainer(seed=0)
    before = jax.tree.map(np.array, trainer.train_state["params"])
    metrics = trainer.train_step(regression_batches(1)[0])
    assert {"critic_loss", "actor_loss", "critic_mae", "actor_mae"} <= set(metrics)
    # two critic updates (sgd-momentum) and one actor update (adam) per step
    assert int(trainer.train_state["opt_state"]["actor"][0].count) == 1
    after = trainer.train_state["params"]
    for name in ("actor", "critic"):
        assert not np.allclose(after[name]["l1"]["kernel"], before[name]["l1"]["kernel"])


def test_a_phase_with_an_unknown_model_is_an_error():
    class Bad(RegressionTrainer):
        def update_phases(self):
            return (UpdatePhase("x", ("nope",)),)

    with pytest.raises(ValueError, match="nope"):
        Bad(TinyMLP(rngs=nnx.Rngs(0)), optax.sgd(0.1)).train_step(regression_batches(1)[0])


def test_the_step_key_changes_every_step():
    """A constant key (the seed's loop) must still give fresh randomness per step."""

    class KeyTrainer(RegressionTrainer):
        def compute_loss(self, model, batch, rng):
            loss, m = super().compute_loss(model, batch, rng)
            return loss, {**m, "noise": jax.random.uniform(rng)}

    trainer = KeyTrainer(TinyMLP(rngs=nnx.Rngs(0)), optax.sgd(0.1))
    b = regression_batches(1)[0]
    noise = [float(trainer.train_step(b)["noise"]) for _ in range(3)]
    assert len(set(noise)) == 3


def test_user_model_is_a_lazy_view_that_is_current_after_fit_and_never_deleted():
    model = TinyMLP(rngs=nnx.Rngs(0))
    trainer = RegressionTrainer(model, optax.sgd(0.1))
    before = np.array(model.l1.kernel[...])
    trainer.train_step(regression_batches(1)[0])
    np.array(model.l1.kernel[...])  # a stale view is still readable (never a donated buffer)
    assert trainer.model is model
    assert not np.allclose(np.array(model.l1.kernel[...]), before)  # reading trainer.model refreshed it
    trainer.fit(regression_batches(3), max_steps=4)
    np.testing.assert_array_equal(np.array(model.l1.kernel[...]), trainer.train_state["params"]["model"]["l1"]["kernel"])


class _Policy(nnx.Module):
    def __init__(self, rngs):
        self.l = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.l(x)


def _reinforce_batch(seed=0, t=6):
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(t, 3)).astype(np.float32),
        "actions": rng.integers(0, 2, size=(t,)).astype(np.int32),
        "rewards": rng.normal(size=(t,)).astype(np.float32),
        "dones": np.array([0, 0, 0, 1, 0, 0], np.float32),
    }


def test_reinforce_leaves_out_steps_whose_episode_does_not_end_in_the_window():
    """Bug 3: the window end was treated as an episode end (truncated returns)."""
    from artifex_rl import REINFORCEConfig, REINFORCETrainer

    def params_after(batch):
        trainer = REINFORCETrainer(_Policy(nnx.Rngs(0)), optax.sgd(0.1), REINFORCEConfig(entropy_coeff=0.0))
        metrics = trainer.train_step(batch)
        return trainer.train_state["params"], metrics

    base = _reinforce_batch()
    changed = dict(base)
    changed["rewards"] = base["rewards"].copy()
    changed["rewards"][4:] = [100.0, -50.0]  # the unfinished episode's rewards
    changed["observations"] = base["observations"].copy()
    changed["observations"][4:] = 7.0
    p1, m1 = params_after(base)
    p2, _ = params_after(changed)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p1, p2)
    assert float(m1["unfinished_frac"]) == pytest.approx(2 / 6)
    # the finished steps alone, as a hand-made batch of one whole episode, give the same update
    whole = {k: v[:4] for k, v in base.items()}
    p3, _ = params_after(whole)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p1, p3)


@pytest.mark.parametrize("algo", ["reinforce", "ppo"])
def test_nan_in_padded_observations_and_actions_never_reaches_the_parameters(algo):
    """C-L4: padding may hold anything, NaN included."""
    from artifex_rl import PPOConfig, PPOTrainer, REINFORCETrainer

    class AC(nnx.Module):
        def __init__(self, rngs):
            self.pi, self.v = nnx.Linear(3, 2, rngs=rngs), nnx.Linear(3, 1, rngs=rngs)

        def __call__(self, x):
            return self.pi(x), self.v(x)[..., 0]

    rng = np.random.default_rng(1)
    obs = rng.normal(size=(2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    obs[mask == 0] = np.nan
    batch = {
        "observations": obs,
        "actions": np.where(mask > 0, rng.integers(0, 2, size=(2, 4)), 7).astype(np.int32),
        "rewards": np.where(mask > 0, 1.0, np.nan).astype(np.float32),
        "mask": mask,
        "dones": np.array([[0, 0, 1, 0], [0, 1, 0, 0]], np.float32),
    }
    if algo == "ppo":
        batch["values"] = np.zeros((2, 4), np.float32)
        batch["log_probs"] = np.full((2, 4), -0.69, np.float32)
        trainer = PPOTrainer(AC(nnx.Rngs(0)), optax.sgd(0.1), PPOConfig(num_minibatches=1, update_epochs=1))
    else:
        trainer = REINFORCETrainer(_Policy(nnx.Rngs(0)), optax.sgd(0.1))
    trainer.train_step(batch)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(trainer.train_state["params"]))


def test_grpo_with_beta_and_no_reference_is_an_error():
    """Bug 6: GRPO with beta > 0, no reference model and no ref_log_probs silently dropped the KL."""
    from artifex_rl import GRPOConfig, GRPOTrainer

    trainer = GRPOTrainer(_Policy(nnx.Rngs(0)), optax.sgd(0.1), GRPOConfig(beta=0.04, num_generations=2),
                          reference_model=None, policy="categorical")
    rng = np.random.default_rng(0)
    batch = {"observations": rng.normal(size=(4, 3)).astype(np.float32),
             "actions": rng.integers(0, 2, size=(4,)).astype(np.int32),
             "rewards": rng.normal(size=(4,)).astype(np.float32), "log_probs": np.full((4,), -0.7, np.float32)}
    with pytest.raises(ValueError, match=r"beta=0.04 > 0 .*no reference"):
        trainer.train_step(batch)


def test_a_nan_reward_inside_the_compiled_step_is_left_out_of_its_group():
    """Bug 7: a NaN reward made NaN advantages and NaN parameters without an error."""
    from artifex_rl import GRPOConfig, GRPOTrainer

    trainer = GRPOTrainer(_Policy(nnx.Rngs(0)), optax.sgd(0.1), GRPOConfig(beta=0.0, num_generations=2),
                          reference_model=None, policy="categorical")
    rng = np.random.default_rng(0)
    rewards = np.array([1.0, np.nan, 0.0, 1.0], np.float32)
    batch = {"observations": rng.normal(size=(4, 3)).astype(np.float32),
             "actions": rng.integers(0, 2, size=(4,)).astype(np.int32),
             "rewards": jnp.asarray(rewards),  # a device array: the host check does not see it
             "log_probs": np.full((4,), -0.7, np.float32)}
    metrics = trainer.train_step(batch)
    assert float(metrics["nonfinite_reward_frac"]) == pytest.approx(0.25)
    assert float(metrics["skipped_step"]) == 0.0
    assert np.isfinite(float(metrics["mean_reward"]))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(trainer.train_state["params"]))
