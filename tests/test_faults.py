"""Fault injection: interruptions and non-finite steps lose nothing and say what went wrong."""

from __future__ import annotations

import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl import TrainerConfig
from artifex_rl.callbacks import Callback, CheckpointConfig, ModelCheckpoint
from artifex_rl.checkpoint import is_complete_checkpoint, read_checkpoint_metadata
from tests import _resume_script as script
from tests._models import RegressionTrainer, TinyMLP, regression_batches
from tests.test_checkpointing import _assert_trees_equal, _run_python


def _trainer(**config):
    return RegressionTrainer(TinyMLP(rngs=nnx.Rngs(0)), optax.sgd(0.05), TrainerConfig(**config))


def _with_nan_at(index: int, n: int = 6):
    batches = regression_batches(n)
    bad = dict(batches[index])
    bad["x"] = bad["x"].copy()
    bad["x"][0, 0] = np.nan
    batches[index] = bad
    return batches


def _finite(trainer) -> bool:
    import jax

    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(trainer.train_state["params"]))


def test_nan_policy_raise_names_the_step_and_metric_and_keeps_the_parameters_finite(tmp_path):
    trainer = _trainer(log_every_n_steps=2)
    ckpt = ModelCheckpoint(CheckpointConfig(str(tmp_path), every_n_train_steps=2, save_top_k=-1))
    with pytest.raises(FloatingPointError, match=r"step 4 .*'loss'"):
        trainer.fit(_with_nan_at(3), max_steps=6, callbacks=[ckpt])
    assert _finite(trainer)
    saved = sorted(p for p in tmp_path.iterdir() if is_complete_checkpoint(p))
    assert saved, "the checkpoints before the fault are kept"
    assert read_checkpoint_metadata(saved[-1])["global_step"] <= 4


def test_nan_policy_skip_drops_the_whole_step_and_goes_on():
    batches = _with_nan_at(2)
    skipping = _trainer(nan_policy="skip", log_every_n_steps=6)
    logged = []

    class Grab(Callback):
        def on_log(self, trainer, metrics, step):
            logged.append(metrics)

    skipping.fit(batches, max_steps=6, callbacks=[Grab()])
    clean = _trainer()
    for i, b in enumerate(batches):
        if i != 2:
            clean.train_step(b)
    import jax

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), skipping.train_state["params"], clean.train_state["params"])
    assert logged[-1]["skipped_step"] == pytest.approx(1 / 6)


def test_nan_policy_raise_in_a_hand_written_loop():
    trainer = _trainer(log_every_n_steps=3)
    with pytest.raises(FloatingPointError, match="step 2"):
        for b in _with_nan_at(1):
            trainer.train_step(b)
    assert _finite(trainer)


def test_sigint_mid_epoch_saves_and_resumes_exactly_in_a_new_process(tmp_path):
    """Ctrl-C after step 17: fit finishes the step, checkpoints it, raises; a new process
    resumes with ckpt_path='last' and ends where a straight run ends, bit for bit."""
    n = 30
    straight = script.run(str(tmp_path / "a"), str(tmp_path / "run_a"), n, resume=False)
    _run_python("run-interrupted", "--ckpt-dir", str(tmp_path / "b"), "--run-dir", str(tmp_path / "run_b"),
                "--max-steps", str(n), "--out", str(tmp_path / "int.npz"))
    interrupted = script.load_outcome(str(tmp_path / "int.npz"))
    assert interrupted["global_step"] == 17
    assert (tmp_path / "b" / "step_00000017").is_dir()
    _run_python("run", "--ckpt-dir", str(tmp_path / "b"), "--run-dir", str(tmp_path / "run_b"),
                "--max-steps", str(n), "--resume", "--out", str(tmp_path / "resumed.npz"))
    resumed = script.load_outcome(str(tmp_path / "resumed.npz"))
    _assert_trees_equal(straight["state"], resumed["state"])
    assert resumed["global_step"] == n


# --------------------------------------------------------------------------- #
# Failing parts: reward functions, loggers, a full disk
# --------------------------------------------------------------------------- #
class FlakyReward:
    """A host (numpy) reward whose failure mode is switched between calls (one object: no recompile)."""

    def __init__(self):
        self.mode = "ok"

    def __call__(self, tokens, conditions=None, completion_mask=None):
        tokens = np.asarray(tokens)
        rewards = (tokens == 3).mean(-1).astype(np.float32) + np.arange(len(tokens)) % 2
        if self.mode == "raise":
            raise ConnectionError("reward server unavailable")
        if self.mode == "nan":
            rewards[::4] = np.nan
        if self.mode == "none":
            return [None if i % 4 == 1 else float(r) for i, r in enumerate(rewards)]
        if self.mode == "shape":
            return rewards[:, None]
        return rewards


def test_reward_function_faults_are_named_or_leave_the_sample_out():
    """Raises: re-raised with the step and the function's name. NaN / None for some samples:
    those samples are left out (advantage 0) and their fraction logged; the parameters stay
    finite. The wrong shape: an error naming the shape."""
    import jax

    from artifex_rl.rewards import RewardFunctionError
    from artifex_rl.rl import GRPOConfig, GRPOTrainer
    from tests._lm_models import CurrentTokenLM

    reward = FlakyReward()
    config = GRPOConfig(num_generations=4, beta=0.0, max_new_tokens=2, eos_id=None)
    trainer = GRPOTrainer(CurrentTokenLM(6, rngs=nnx.Rngs(0)), optax.sgd(0.1), config, reward_fn=reward)
    prompts = {"prompts": np.array([[2, 3], [4, 5]], np.int32)}
    trainer.train_step(prompts)
    assert trainer.reward_on_host

    reward.mode = "raise"
    with pytest.raises(RewardFunctionError, match=r"step 1.*FlakyReward.*ConnectionError.*reward server") as info:
        trainer.train_step(prompts)
    assert isinstance(info.value.__cause__, ConnectionError)

    for mode in ("nan", "none"):
        reward.mode = mode
        metrics = jax.device_get(trainer.train_step(prompts))
        assert metrics["nonfinite_reward_frac"] == pytest.approx(0.25), mode
        assert np.isfinite(metrics["loss"]) and _finite(trainer), mode
        assert np.isnan(np.asarray(trainer.last_outputs["rewards"])).sum() == 2, mode

    reward.mode = "shape"
    with pytest.raises(ValueError, match=r"FlakyReward.*shape \(8, 1\), expected \(8,\)"):
        trainer.train_step(prompts)


def test_a_grpo_advantage_is_zero_for_an_unscorable_sample():
    from artifex_rl.rl.losses import compute_group_advantages

    rewards = np.array([1.0, np.nan, 3.0, 5.0, 2.0, 2.0, np.nan, 4.0], np.float32)
    advantages, metrics = compute_group_advantages(rewards, 4, "group")
    advantages = np.asarray(advantages)
    assert advantages[1] == 0 and advantages[6] == 0 and np.isfinite(advantages).all()
    np.testing.assert_allclose(advantages[[0, 2, 3]].mean(), 0.0, atol=1e-6)  # stats over the scorable ones
    assert float(metrics["nonfinite_reward_frac"]) == pytest.approx(0.25)


class _Boom(Exception):
    pass


def test_a_failing_logger_is_reported_once_and_disabled_while_training_goes_on(caplog):
    import logging

    calls = []

    class BrokenLogger(Callback):
        log_may_lag = True

        def on_log(self, trainer, metrics, step):
            calls.append(step)
            raise OSError(28, "No space left on device")

    class Strict(Callback):  # not a logger: its failure still stops the run
        def on_train_batch_end(self, trainer, metrics, step):
            if trainer.global_step == 3:
                raise _Boom("stop")

    trainer = _trainer(log_every_n_steps=2)
    with caplog.at_level(logging.ERROR, logger="artifex_rl.events"):
        trainer.fit(regression_batches(4), max_steps=8, max_epochs=None, callbacks=[BrokenLogger()])
    assert trainer.global_step == 8 and calls == [2]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "BrokenLogger" in errors[0].getMessage()
    with pytest.raises(_Boom):
        _trainer().fit(regression_batches(4), max_steps=8, max_epochs=None, callbacks=[Strict()])


def test_a_wandb_logger_whose_log_raises_is_reported_once_and_training_goes_on(tmp_path, monkeypatch, caplog):
    import logging

    import wandb

    from artifex_rl.callbacks import WandbLoggerCallback, WandbLoggerConfig

    logged = []

    class FakeRun:
        id = "fake"

        def log(self, metrics, step=None):
            logged.append(step)
            raise wandb.errors.CommError("connection reset")

        def finish(self, exit_code=0):
            pass

    monkeypatch.setattr(wandb, "init", lambda **kwargs: FakeRun())
    logger = WandbLoggerCallback(WandbLoggerConfig(project="p", mode="offline", dir=str(tmp_path), log_every_n_steps=2))
    trainer = _trainer(log_every_n_steps=2)
    with caplog.at_level(logging.WARNING):
        trainer.fit(regression_batches(4), max_steps=10, max_epochs=None, callbacks=[logger])
    assert trainer.global_step == 10 and logged == [2]
    reports = [r for r in caplog.records if "W&B" in r.getMessage() or "WandbLogger" in r.getMessage()]
    assert len(reports) == 1, [r.getMessage() for r in reports]


_FULL_DISK = """
import resource, signal, sys
import optax
from flax import nnx
from artifex_rl import TrainerConfig
from artifex_rl.callbacks import MetricsLogger
from tests._models import RegressionTrainer, TinyMLP, regression_batches

run_dir = sys.argv[1]
trainer = RegressionTrainer(TinyMLP(rngs=nnx.Rngs(0)), optax.sgd(0.05), TrainerConfig(log_every_n_steps=1))
logger = MetricsLogger(run_dir, plot=False, write_csv=False, parameter_overview=False)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises OSError(EFBIG)
resource.setrlimit(resource.RLIMIT_FSIZE, (400, 400))  # the disk is full after ~3 rows
trainer.fit(regression_batches(4), max_steps=20, max_epochs=None, callbacks=[logger])
print("global_step", trainer.global_step)
"""


def test_a_metrics_file_on_a_full_disk_is_dropped_and_training_goes_on(tmp_path):
    """RLIMIT_FSIZE in a subprocess simulates the full disk (CI runs as root: permissions do not)."""
    import os
    import subprocess
    import sys

    from tests.test_checkpointing import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "run")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global_step 20" in proc.stdout
    assert proc.stderr.count("MetricsLogger failed in on_log") == 1, proc.stderr[-3000:]
    assert 0 < os.path.getsize(tmp_path / "run" / "metrics.jsonl") <= 400


def test_a_failing_checkpoint_save_is_an_error(tmp_path):
    """A checkpoint callback is not a logger: a save that cannot be written stops the run (never a silent gap)."""
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the checkpoint directory should go")
    ckpt = ModelCheckpoint(CheckpointConfig(str(blocker / "ckpt"), every_n_train_steps=2, async_save=False))
    with pytest.raises(OSError):
        _trainer().fit(regression_batches(4), max_steps=4, max_epochs=None, callbacks=[ckpt])
