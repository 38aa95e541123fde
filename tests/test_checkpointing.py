"""Checkpoints: exact resume in a new process, crash safety, async saves vs donation, top-k."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl import TrainerConfig
from artifex_rl.callbacks import Callback, CheckpointConfig, ModelCheckpoint
from artifex_rl.checkpoint import dump_checkpoint
from artifex_rl.checkpointing import (
    TrainerCheckpointer,
    is_complete_checkpoint,
    load_model,
    load_trainer_checkpoint,
    read_checkpoint_metadata,
    save_trainer_checkpoint,
)
from tests import _resume_script as script
from tests._models import RegressionTrainer, TinyMLP, make_regression_trainer, regression_batches

REPO = Path(__file__).resolve().parents[1]


def _python(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests._resume_script", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _run_python(*args: str, timeout: float = 120) -> None:
    proc = _python(*args)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{out}\n{err[-3000:]}"


def _assert_trees_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _straight_and_resumed(tmp_path, command: str, n: int) -> tuple[dict, dict]:
    """``n`` steps straight (here), and ``n/2`` steps here + ``resume("last")`` to ``n`` in a new process."""
    run = {"run": script.run, "run-ppo": script.run_ppo, "run-two": script.run_two}[command]
    straight = run(str(tmp_path / "ckpt_a"), str(tmp_path / "run_a"), n, resume=False)
    half = run(str(tmp_path / "ckpt_b"), str(tmp_path / "run_b"), n // 2, resume=False)
    assert half["global_step"] == n // 2
    out = tmp_path / "resumed.npz"
    _run_python(
        command, "--ckpt-dir", str(tmp_path / "ckpt_b"), "--run-dir", str(tmp_path / "run_b"),
        "--max-steps", str(n), "--resume", "--out", str(out),
    )  # fmt: skip
    return straight, script.load_outcome(str(out))


def test_exact_resume_in_a_new_process(tmp_path):
    """N steps straight == N/2 steps + checkpoint + new process + resume("last") + N/2 steps, bit for bit."""
    n = 40
    straight, resumed = _straight_and_resumed(tmp_path, "run", n)

    # params, model state, optimizer state (Adam moments + count), rng and step counter
    assert {k.split("/")[0] for k in straight["state"]} == {"params", "opt_state", "rng", "step"}
    assert any(k.startswith("params/model/") for k in straight["state"])
    _assert_trees_equal(straight["state"], resumed["state"])
    assert resumed["global_step"] == straight["global_step"] == n
    assert resumed["current_epoch"] == straight["current_epoch"]
    # every logged row (steps 5..40): before the checkpoint from process 1, after it from process 2
    assert [r["step"] for r in straight["rows"]] == list(range(5, n + 1, 5))
    assert resumed["rows"] == straight["rows"]
    # callback states that had to survive the resume
    assert resumed["early_stopping"] == straight["early_stopping"]
    assert straight["early_stopping"]["wait_count"] > 0  # non-trivial state
    assert resumed["checkpoint"] == straight["checkpoint"]
    assert sorted(os.listdir(tmp_path / "ckpt_b")) == sorted(os.listdir(tmp_path / "ckpt_a"))


def test_exact_resume_of_ppo_on_a_fused_rollout_source_in_a_new_process(tmp_path):
    """PPO + gymnax rollouts, collect and update fused two per call: 8 iterations straight
    == 4 + checkpoint + new process + resume + 4, bit for bit (the environments' state too)."""
    n = 8
    straight, resumed = _straight_and_resumed(tmp_path, "run-ppo", n)
    assert any(k.startswith("source/carry") for k in straight["state"])
    _assert_trees_equal(straight["state"], resumed["state"])
    assert resumed["global_step"] == straight["global_step"] == n
    assert [r["step"] for r in straight["rows"]] == [2, 4, 6, 8]
    assert resumed["rows"] == straight["rows"]
    assert resumed["checkpoint"] == straight["checkpoint"]


def test_exact_resume_of_two_models_with_two_optimizers_and_an_ema_in_a_new_process(tmp_path):
    """A trainer of two named models (Adam and SGD-momentum, two update phases) and an EMA
    in its extra state: 12 steps straight == 6 + checkpoint + new process + 6, bit for bit."""
    n = 12
    straight, resumed = _straight_and_resumed(tmp_path, "run-two", n)
    keys = set(straight["state"])
    assert {"params/actor/l1/kernel", "params/critic/l1/kernel", "extra/actor_ema/l1/kernel"} <= keys
    assert any(k.startswith("opt_state/critic") for k in keys) and any(k.startswith("opt_state/actor") for k in keys)
    _assert_trees_equal(straight["state"], resumed["state"])
    assert resumed["rows"] == straight["rows"] and resumed["global_step"] == n
    assert "critic_loss" in straight["rows"][-1] and "actor_loss" in straight["rows"][-1]


def test_load_model_in_a_new_process_and_exit_finishes_an_async_save(tmp_path):
    trainer = make_regression_trainer()
    trainer.fit(regression_batches(4), max_steps=3)
    path = save_trainer_checkpoint(trainer, tmp_path / "ckpt")
    out = tmp_path / "params.npz"
    _run_python("load-model", "--ckpt", path, "--out", str(out), "--exit-save", str(tmp_path / "at_exit"))
    # the process returned right after starting an async save: exit waited for it
    assert is_complete_checkpoint(tmp_path / "at_exit")
    assert read_checkpoint_metadata(tmp_path / "at_exit")["global_step"] == 0
    with np.load(out) as loaded:
        restored = {k: loaded[k] for k in loaded.files}
    expected = script.flat_state(trainer.train_state["params"]["model"])
    _assert_trees_equal(expected, restored)


def test_roundtrip_restores_counters_and_callback_metrics(tmp_path):
    trainer = make_regression_trainer(log_every_n_steps=2)
    trainer.fit(regression_batches(4), max_steps=6, max_epochs=None)
    path = save_trainer_checkpoint(trainer, tmp_path / "ckpt")
    assert is_complete_checkpoint(path)
    meta = read_checkpoint_metadata(path)
    assert meta["global_step"] == 6 and meta["current_epoch"] == 1

    other = make_regression_trainer(seed=7, log_every_n_steps=2)
    load_trainer_checkpoint(other, path)
    _assert_trees_equal(script.flat_state(trainer.train_state), script.flat_state(other.train_state))
    assert (other.global_step, other.current_epoch, other.batches_seen_in_epoch) == (6, 1, 2)
    assert other.callback_metrics == trainer.callback_metrics
    # the user's model object holds the restored parameters
    np.testing.assert_array_equal(other.model.l1.kernel[...], trainer.model.l1.kernel[...])

    with pytest.raises(FileExistsError, match="already exists"):
        save_trainer_checkpoint(trainer, path)
    save_trainer_checkpoint(trainer, path, overwrite=True)


def test_load_model_from_eval_shape_without_trainer(tmp_path):
    trainer = make_regression_trainer()
    trainer.fit(regression_batches(2), max_steps=2)
    path = save_trainer_checkpoint(trainer, tmp_path / "ckpt")
    model = load_model(path, lambda: TinyMLP(rngs=nnx.Rngs(99)))
    np.testing.assert_array_equal(model.l2.kernel[...], trainer.model.l2.kernel[...])
    x = regression_batches(1)[0]["x"]
    np.testing.assert_array_equal(model(x), trainer.model(x))


def test_mismatched_checkpoint_names_the_key_and_shapes(tmp_path):
    trainer = make_regression_trainer()
    path = save_trainer_checkpoint(trainer, tmp_path / "ckpt")

    wider = TinyMLP(hidden=32, rngs=nnx.Rngs(0))
    other = RegressionTrainer(wider, nnx.Optimizer(wider, optax.adam(1e-2), wrt=nnx.Param), TrainerConfig())
    with pytest.raises(
        ValueError, match=r"params/model/l1/kernel: checkpoint has shape \(4, 16\).*wants \(4, 32\)"
    ):
        load_trainer_checkpoint(other, path)

    model = TinyMLP(rngs=nnx.Rngs(0))
    sgd = RegressionTrainer(model, optax.sgd(0.1), TrainerConfig())
    with pytest.raises(
        ValueError, match=r"checkpoint has but this trainer's state lacks: \['train/opt_state/model/0/count'"
    ):
        load_trainer_checkpoint(sgd, path)

    with pytest.raises(ValueError, match="wants"):
        load_model(path, lambda: TinyMLP(in_dim=3, rngs=nnx.Rngs(0)))
    with pytest.raises(FileNotFoundError):
        load_trainer_checkpoint(trainer, tmp_path / "missing")


def test_async_save_is_safe_against_donation(tmp_path):
    """The state buffers are freed right after save() returns, while the write is still in flight.

    That is what the next (donating) step does to them; here they are deleted
    explicitly, because on CPU a host view of a buffer makes XLA skip the
    donation (a copy instead), which would hide a saver that still read them.
    """
    trainer = make_regression_trainer()
    batches = regression_batches(4)
    trainer.fit(batches, max_steps=3, max_epochs=None)
    expected = jax.tree.map(lambda x: x.copy(), trainer.train_state)  # device copies, no host views

    checkpointer = TrainerCheckpointer(async_save=True)
    path = checkpointer.save(trainer, tmp_path / "ckpt")
    for leaf in jax.tree.leaves(trainer.train_state):
        leaf.delete()
    assert trainer.train_state["params"]["model"]["l1"]["kernel"].is_deleted()
    checkpointer.close()

    fresh = make_regression_trainer(seed=3)
    load_trainer_checkpoint(fresh, path)
    _assert_trees_equal(script.flat_state(expected), script.flat_state(fresh.train_state))

    # And the normal case: training goes on (donating) during the write.
    checkpointer = TrainerCheckpointer(async_save=True)
    snapshot = script.flat_state(jax.tree.map(lambda x: x.copy(), fresh.train_state))
    path = checkpointer.save(fresh, tmp_path / "ckpt2")
    fresh.fit(batches, max_steps=8, max_epochs=None)
    checkpointer.close()
    again = make_regression_trainer(seed=4)
    load_trainer_checkpoint(again, path)
    _assert_trees_equal(snapshot, script.flat_state(again.train_state))


class _JsonLoader:
    """A re-iterable loader that remembers its position (a JSON-able state)."""

    def __init__(self, batches):
        self.batches, self.pos = batches, 0

    def __iter__(self):
        while self.pos < len(self.batches):
            self.pos += 1
            yield self.batches[self.pos - 1]
        self.pos = 0

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


class _ArrayLoader(_JsonLoader):
    """Same, with an array state (e.g. an environment's state): saved as an orbax pytree."""

    def state_dict(self):
        return {"pos": np.asarray(self.pos, np.int32), "key": jax.random.PRNGKey(self.pos)}

    def load_state_dict(self, state):
        self.pos = int(state["pos"])
        np.testing.assert_array_equal(state["key"], jax.random.PRNGKey(self.pos))


@pytest.mark.parametrize("loader_cls", [_JsonLoader, _ArrayLoader])
def test_dataloader_state_is_saved_and_restored(tmp_path, loader_cls):
    batches = regression_batches(6)

    class StopAt3(Callback):
        def on_train_batch_end(self, trainer, metrics, step):
            if trainer.global_step == 3:
                trainer.save_checkpoint(str(tmp_path / "ckpt"))

    trainer = make_regression_trainer()
    trainer.fit(loader_cls(batches), max_epochs=1, callbacks=[StopAt3()])
    loader = loader_cls(batches)
    resumed = make_regression_trainer()
    resumed.dataloader = loader  # what fit(ckpt_path=...) does before loading
    resumed.load_checkpoint(str(tmp_path / "ckpt"))
    assert loader.pos == 3 and resumed.batches_seen_in_epoch == 3


def _scored_batches(scores):
    """Batches whose step metrics carry ``score`` (the trainer passes batch["metrics"] through)."""
    base = regression_batches(len(scores))
    return [{**b, "metrics": {"score": np.float32(s)}} for b, s in zip(base, scores, strict=True)]


def test_top_k_keeps_best_and_last(tmp_path):
    """Three ModelCheckpoints with different settings on one run (they also get distinct state keys)."""
    scores = [5.0, 3.0, 4.0, 1.0, 2.0, float("nan"), 6.0]
    cases = {  # (mode, top_k): (kept steps, best step)
        ("min", 2): ([4, 5, 7], 4),  # best two (1.0 @4, 2.0 @5) + last (@7); NaN never ranks
        ("max", 2): ([1, 7], 7),  # 6.0 @7 and 5.0 @1; the last (@7) is one of them
        ("min", -1): ([1, 2, 3, 4, 5, 6, 7], 4),  # keep all
    }
    configs = {
        key: CheckpointConfig(
            str(tmp_path / f"{key[0]}{key[1]}"),
            monitor="score",
            mode=key[0],
            save_top_k=key[1],
            every_n_train_steps=1,
        )
        for key in cases
    }
    callbacks = {key: ModelCheckpoint(config) for key, config in configs.items()}
    trainer = make_regression_trainer(log_every_n_steps=1)
    trainer.fit(_scored_batches(scores), max_epochs=1, callbacks=list(callbacks.values()))
    assert set(dump_checkpoint(trainer).metadata["callbacks"]) == {
        "ModelCheckpoint",
        "ModelCheckpoint#1",
        "ModelCheckpoint#2",
    }

    for key, (expected_kept, expected_best) in cases.items():
        checkpoint, directory = callbacks[key], Path(configs[key].dirpath)
        on_disk = sorted(int(p.name.split("_")[1]) for p in directory.glob("step_*"))
        assert on_disk == expected_kept, key
        assert checkpoint.best_model_path == str(directory / f"step_{expected_best:08d}")
        assert checkpoint.best_model_score == scores[expected_best - 1]
        assert checkpoint.resolve_checkpoint_path("last") == str(directory / "step_00000007")
        index = json.loads((directory / "index.json").read_text())
        assert [e["step"] for e in index["checkpoints"]] == expected_kept and index["superseded"] == []
        # A new process (a fresh callback) resolves the same paths from index.json.
        fresh = ModelCheckpoint(configs[key])
        assert fresh.resolve_checkpoint_path("best") == checkpoint.best_model_path
        assert fresh.resolve_checkpoint_path("last") == checkpoint.last_model_path


def test_without_monitor_keeps_the_most_recent_and_saves_at_epoch_and_train_end(tmp_path):
    trainer = make_regression_trainer(log_every_n_steps=2)
    checkpoint = ModelCheckpoint(CheckpointConfig(str(tmp_path), save_top_k=2, async_save=False))
    trainer.fit(regression_batches(4), max_steps=11, max_epochs=None, callbacks=[checkpoint])
    # epoch ends at 4 and 8, train end at 11; top-2 by recency
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000008", "step_00000011"]
    assert checkpoint.resolve_checkpoint_path("best") == str(tmp_path / "step_00000011")


def test_fit_ckpt_path_best_without_checkpoints_is_a_clear_error(tmp_path):
    trainer = make_regression_trainer()
    checkpoint = ModelCheckpoint(CheckpointConfig(str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="ckpt_path='best'"):
        trainer.fit(regression_batches(2), callbacks=[checkpoint], ckpt_path="best")


def test_killed_writer_leaves_earlier_checkpoints_intact_and_resume_works(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    proc = _python("crash-writer", "--ckpt-dir", str(ckpt_dir))
    try:
        # Kill it while a checkpoint is being written (a tmp dir exists), after a few complete ones.
        deadline = time.monotonic() + 90
        killed_mid_write = False
        while time.monotonic() < deadline:
            names = os.listdir(ckpt_dir) if ckpt_dir.exists() else []
            complete = [n for n in names if n.startswith("step_") and "tmp" not in n]
            if len(complete) >= 3 and any("orbax-checkpoint-tmp" in n for n in names):
                killed_mid_write = True
                break
            if proc.poll() is not None:
                pytest.fail(f"writer exited early: {proc.communicate()[1][-3000:]}")
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed_mid_write, "the writer never reached a mid-write state within the deadline"

    complete = sorted(
        int(n.split("_")[1]) for n in os.listdir(ckpt_dir) if n.startswith("step_") and "tmp" not in n
    )
    assert len(complete) >= 3 and complete == list(range(2, 2 * len(complete) + 1, 2))

    # Every complete checkpoint holds exactly the state of a straight run at that step.
    reference, batches = {}, regression_batches(8)

    class Record(Callback):
        def on_train_batch_end(self, trainer, metrics, step):
            if trainer.global_step in complete:
                reference[trainer.global_step] = script.flat_state(trainer.train_state)

    make_regression_trainer(log_every_n_steps=2).fit(
        batches, max_steps=complete[-1], max_epochs=None, callbacks=[Record()]
    )
    for step in complete:
        restored = make_regression_trainer(log_every_n_steps=2)
        restored.load_checkpoint(str(ckpt_dir / f"step_{step:08d}"))
        _assert_trees_equal(reference[step], script.flat_state(restored.train_state))

    # "last" is the newest complete checkpoint (index.json lists the one being written
    # before it is written, and completeness is checked on disk); the tmp dir is cleaned up.
    checkpoint = ModelCheckpoint(CheckpointConfig(str(ckpt_dir), save_top_k=-1, every_n_train_steps=2))
    last = checkpoint.resolve_checkpoint_path("last")
    assert last == str(ckpt_dir / f"step_{complete[-1]:08d}")
    last_step = complete[-1]
    trainer = make_regression_trainer(log_every_n_steps=2)
    trainer.fit(batches, max_steps=last_step + 4, max_epochs=None, callbacks=[checkpoint], ckpt_path="last")
    assert trainer.global_step == last_step + 4
    assert not any("orbax-checkpoint-tmp" in n for n in os.listdir(ckpt_dir))
    assert is_complete_checkpoint(ckpt_dir / f"step_{last_step + 4:08d}")


def test_fused_calls_end_on_every_checkpoint_step(tmp_path):
    # Saves every 6 steps with 4 steps per call: calls end at 4, 6, 8, 12, ... so
    # each checkpoint holds the state after exactly its step, as with one step per call.
    data = regression_batches(4)
    checkpoint = ModelCheckpoint(CheckpointConfig(str(tmp_path / "fused"), every_n_train_steps=6, save_top_k=-1))
    fused = make_regression_trainer(seed=3, log_every_n_steps=4, steps_per_execution=4)
    fused.fit(data, max_steps=13, max_epochs=None, callbacks=[checkpoint])
    saved = sorted(e["step"] for e in checkpoint.state_dict()["checkpoints"])
    assert saved == [6, 12, 13]
    sequential = make_regression_trainer(seed=3, log_every_n_steps=4)
    sequential.fit(data, max_steps=6, max_epochs=None)
    restored = make_regression_trainer(seed=3, log_every_n_steps=4, steps_per_execution=4)
    restored.fit(data, max_steps=6, max_epochs=None,
                 callbacks=[ModelCheckpoint(CheckpointConfig(str(tmp_path / "fused")))],
                 ckpt_path=str(tmp_path / "fused" / "step_00000006"))
    assert restored.global_step == 6
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        restored.train_state["params"],
        sequential.train_state["params"],
    )
