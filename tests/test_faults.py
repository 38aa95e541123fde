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
