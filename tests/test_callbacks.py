"""Logging, progress, profiling, early-stopping and metrics callbacks, in fit and in hand-written loops."""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
import struct
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from artifex_rl.callbacks import (
    Callback,
    CheckpointConfig,
    DeviceMemoryMonitor,
    EarlyStopping,
    JAXProfiler,
    MetricsLogger,
    ModelCheckpoint,
    ProfilingConfig,
    ProgressBarCallback,
    WandbLoggerCallback,
    WandbLoggerConfig,
)
from artifex_rl.callbacks.wandb_logger import resolve_mode
from tests._models import make_regression_trainer, regression_batches


class Recorder(Callback):
    """Records what on_log received."""

    def __init__(self):
        self.logs: list[tuple[int, dict[str, float]]] = []

    def on_log(self, trainer, metrics, step):
        self.logs.append((step, dict(metrics)))


class RaiseAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, metrics, step):
        if trainer.global_step == self.step:
            raise RuntimeError(f"boom at {self.step}")


def scored_batches(scores):
    """Batches whose step metrics carry ``score`` (the trainer passes batch["metrics"] through)."""
    base = regression_batches(len(scores))
    return [{**b, "metrics": {"score": np.float32(s)}} for b, s in zip(base, scores, strict=True)]


# ---------------------------------------------------------------------- #
# W&B (offline): read back what was logged from the run's .wandb file
# ---------------------------------------------------------------------- #
def read_wandb_records(run_dir: str) -> list:
    """Records of a run's ``run-<id>.wandb`` transaction log.

    The file is a LevelDB-style log (what ``wandb sync`` uploads): a 7-byte
    header (":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks with
    a 7-byte header (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last),
    each record a ``wandb_internal_pb2.Record`` protobuf. wandb 0.31 no
    longer ships the Python reader (``wandb.sdk.internal.datastore``).
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    data = Path(path).read_bytes()
    if len(data) < 7:
        return []
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break  # a chunk still being written
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        else:
            continue
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def finished_records(run_dir: str, timeout: float = 20.0) -> list:
    """The run's records once its exit record is on disk.

    ``run.finish()`` returns before wandb-core has flushed the offline
    transaction log, so the file is polled.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_records(run_dir)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_history(run_dir: str) -> list[dict]:
    rows = []
    for r in finished_records(run_dir):
        if r.WhichOneof("record_type") == "history":
            rows.append({_item_key(item): json.loads(item.value_json) for item in r.history.item})
    return rows


def wandb_exit_code(run_dir: str) -> int | None:
    codes = [r.exit.exit_code for r in finished_records(run_dir) if r.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None


def wandb_config(run_dir: str) -> dict:
    config = {}
    for r in finished_records(run_dir):
        kind = r.WhichOneof("record_type")
        items = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        for item in items:
            config[_item_key(item)] = json.loads(item.value_json)
    return config


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # wandb caches settings process-wide at its first init: pass dir= explicitly, not WANDB_DIR.
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def _run_dirs(root) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "wandb", "offline-run-*")))


def test_wandb_offline_logs_metrics_at_the_global_step_configs_and_tables(wandb_env):
    trainer = make_regression_trainer(log_every_n_steps=5, log_grad_norm=True)
    recorder = Recorder()
    logger = WandbLoggerCallback(
        WandbLoggerConfig(
            project="p",
            name="t",
            config={"algorithm": "test", "beta": 0.01},
            log_every_n_steps=5,
            dir=str(wandb_env),
        )
    )

    class Samples(Callback):  # what an LM trainer would do with generated text
        def on_log(self, trainer, metrics, step):
            if step == 10:
                logger.log_table("samples", ["prompt", "completion"], [["2+2=", "4"], ["3+3=", "6"]])

    # max_steps=23: the last interval (steps 21-23) is partial and logged at step 23.
    trainer.fit(regression_batches(8), max_steps=23, max_epochs=None, callbacks=[recorder, logger, Samples()])
    (run_dir,) = _run_dirs(wandb_env)

    history = wandb_history(run_dir)
    assert [row["_step"] for row in history] == [5, 10, 15, 20, 23]
    for row, (step, metrics) in zip(history, recorder.logs, strict=True):
        assert row["_step"] == step
        for key in ("loss", "mae", "grad_norm"):
            assert row[key] == pytest.approx(metrics[key], rel=1e-12)
    assert history[1]["samples/_type"] == "table-file" and history[1]["samples/nrows"] == 2
    config = wandb_config(run_dir)
    assert config["algorithm"] == "test" and config["beta"] == 0.01
    assert config["trainer"]["log_every_n_steps"] == 5 and config["trainer"]["class"] == "RegressionTrainer"
    assert wandb_exit_code(run_dir) == 0
    assert logger.run is None  # finished

    # The run id travels in the callback state: a resumed training continues the same W&B run.
    state = logger.state_dict()
    assert run_dir.endswith(state["run_id"])
    resumed = WandbLoggerCallback(WandbLoggerConfig(project="p", log_every_n_steps=5, dir=str(wandb_env)))
    resumed.load_state_dict(state)
    trainer.fit(regression_batches(8), max_steps=25, max_epochs=None, callbacks=[resumed])
    second = [d for d in _run_dirs(wandb_env) if d != run_dir]
    assert len(second) == 1 and second[0].endswith(state["run_id"])
    assert [row["_step"] for row in wandb_history(second[0])] == [25]


def test_wandb_marks_a_crashed_run_failed_and_keeps_logging_interval(wandb_env):
    trainer = make_regression_trainer(log_every_n_steps=2)
    # W&B interval 5 with the trainer logging every 2 steps: forwarded when a multiple of 5 is crossed.
    logger = WandbLoggerCallback(WandbLoggerConfig(project="p", log_every_n_steps=5, dir=str(wandb_env)))
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(regression_batches(8), max_steps=20, callbacks=[logger, RaiseAt(13)], max_epochs=None)
    (run_dir,) = _run_dirs(wandb_env)
    assert [row["_step"] for row in wandb_history(run_dir)] == [6, 10]
    assert wandb_exit_code(run_dir) == 1


def test_wandb_init_failure_warns_once_and_training_completes(wandb_env, monkeypatch, caplog):
    import wandb

    def broken_init(*args, **kwargs):
        raise wandb.errors.CommError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    trainer = make_regression_trainer(log_every_n_steps=2)
    logger = WandbLoggerCallback(WandbLoggerConfig(project="p", mode="online"))
    with caplog.at_level(logging.WARNING, logger="artifex_rl.callbacks.wandb_logger"):
        trainer.fit(regression_batches(4), max_steps=8, max_epochs=None, callbacks=[logger])
        logger.log_table("samples", ["a"], [["x"]])  # a no-op once disabled
    assert trainer.global_step == 8
    warnings = [r for r in caplog.records if r.name == "artifex_rl.callbacks.wandb_logger"]
    assert len(warnings) == 1 and "no network" in warnings[0].getMessage()


def test_wandb_disabled_mode_is_a_noop(wandb_env, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init called in disabled mode"))
    logger = WandbLoggerCallback(WandbLoggerConfig(project="p", mode="disabled"))
    make_regression_trainer().fit(regression_batches(2), callbacks=[logger])
    assert logger.run is None and not _run_dirs(wandb_env)


def test_wandb_mode_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_mode(None) == "offline"  # no key anywhere
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert resolve_mode(None) == "online"
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(None) == "disabled"
    assert resolve_mode("offline") == "offline"


# ---------------------------------------------------------------------- #
# The seeds' hand-written loop
# ---------------------------------------------------------------------- #
def test_seed_manual_loop_runs_with_all_callbacks(wandb_env, tmp_path):
    """The rl_training_guide snippet: callbacks called by hand around train_step."""
    trainer = make_regression_trainer(log_every_n_steps=5)
    dataloader = regression_batches(20)
    out = io.StringIO()
    callbacks = [
        WandbLoggerCallback(
            WandbLoggerConfig(
                project="rl-finetuning", name="manual", log_every_n_steps=10, dir=str(wandb_env)
            )
        ),
        ModelCheckpoint(
            CheckpointConfig(
                dirpath=str(tmp_path / "ckpt"),
                monitor="loss",
                mode="min",
                save_top_k=1,
                every_n_train_steps=5,
            )
        ),  # fmt: skip
        JAXProfiler(ProfilingConfig(log_dir=str(tmp_path / "prof"), start_step=3, end_step=6)),
        ProgressBarCallback(file=out, disable=False),
        MetricsLogger(str(tmp_path / "run"), plot=True),
    ]
    for callback in callbacks:
        callback.on_train_begin(trainer)
    for step, batch in enumerate(dataloader):
        metrics = trainer.train_step(batch)
        for callback in callbacks:
            callback.on_train_batch_end(trainer, metrics, step)
    for callback in callbacks:
        callback.on_train_end(trainer)

    wandb_logger, checkpoint, profiler, progress, metrics_logger = callbacks
    (run_dir,) = _run_dirs(wandb_env)
    history = wandb_history(run_dir)
    assert [row["_step"] for row in history] == [10, 20]
    assert all(math.isfinite(row["loss"]) for row in history)
    # top-1 by the step's own loss + the last; best is resolvable for fit(ckpt_path="best")
    assert checkpoint.last_model_path.endswith("step_00000020")
    assert checkpoint.resolve_checkpoint_path("best") == checkpoint.best_model_path
    assert profiler.trace_written and glob.glob(str(tmp_path / "prof" / "**" / "*.xplane.pb"), recursive=True)
    assert "loss=" in out.getvalue() and "20/" not in out.getvalue()  # no total known by hand
    assert [r["step"] for r in metrics_logger.rows()] == [5, 10, 15, 20]
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 0


# ---------------------------------------------------------------------- #
# Profiler
# ---------------------------------------------------------------------- #
def test_profiler_writes_a_trace_of_the_window(tmp_path):
    profiler = JAXProfiler(ProfilingConfig(log_dir=str(tmp_path), start_step=2, end_step=5))

    class Watch(Callback):
        active_at: dict[int, bool] = {}

        def on_train_batch_start(self, trainer, batch, step):
            self.active_at[step] = profiler.active

    watch = Watch()
    make_regression_trainer().fit(regression_batches(8), callbacks=[watch, profiler])
    assert watch.active_at == {0: False, 1: False, 2: True, 3: True, 4: True, 5: False, 6: False, 7: False}
    assert glob.glob(str(tmp_path / "plugins" / "profile" / "*" / "*.xplane.pb"))


def test_profiler_stops_on_an_exception_inside_the_window(tmp_path):
    profiler = JAXProfiler(ProfilingConfig(log_dir=str(tmp_path / "a"), start_step=1, end_step=100))
    with pytest.raises(RuntimeError, match="boom"):
        make_regression_trainer().fit(regression_batches(8), callbacks=[profiler, RaiseAt(3)])
    assert not profiler.active and profiler.trace_written
    assert glob.glob(str(tmp_path / "a" / "**" / "*.xplane.pb"), recursive=True)
    # the global profiler is free again: a new trace can start
    jax.profiler.start_trace(str(tmp_path / "b"))
    jax.profiler.stop_trace()


def test_device_memory_monitor(monkeypatch):
    monitor = DeviceMemoryMonitor()
    assert monitor.stats() == {}  # CPU reports no memory stats: nothing is added

    class FakeDevice:
        def memory_stats(self):
            return {"bytes_in_use": 10, "peak_bytes_in_use": 20, "other": 1}

    monitor = DeviceMemoryMonitor(device=FakeDevice())
    recorder = Recorder()
    trainer = make_regression_trainer(log_every_n_steps=2)
    trainer.fit(regression_batches(4), callbacks=[monitor, recorder])
    assert recorder.logs[-1][1]["memory/peak_bytes_in_use"] == 20.0
    assert trainer.callback_metrics["memory/bytes_in_use"] == 10.0


# ---------------------------------------------------------------------- #
# Progress bar
# ---------------------------------------------------------------------- #
def test_progress_bar_forced_renders_postfix_only_on_log_steps():
    out = io.StringIO()
    bar = ProgressBarCallback(file=out, disable=False)
    trainer = make_regression_trainer(log_every_n_steps=5)
    trainer.fit(regression_batches(4), max_steps=20, max_epochs=None, callbacks=[bar])
    text = out.getvalue()
    frames = [f for f in text.split("\r") if f.strip()]
    assert "20/20" in frames[-1] and "loss=" in frames[-1] and "mae=" not in frames[-1]
    assert "step/s" in frames[-1]
    # drawn at start, at each of the 4 logs and at the end (close): never per step
    assert len(frames) <= 7
    assert bar.bar is None  # closed


def test_progress_bar_total_from_epochs_and_closed_on_exception():
    out = io.StringIO()
    bar = ProgressBarCallback(file=out, disable=False, keys=["loss", "mae"])
    trainer = make_regression_trainer(log_every_n_steps=2)
    with pytest.raises(RuntimeError):
        trainer.fit(regression_batches(4), max_epochs=3, callbacks=[bar, RaiseAt(7)])
    assert "/12" in out.getvalue() and "mae=" in out.getvalue()
    assert bar.bar is None


def test_progress_bar_non_tty_writes_one_summary_line():
    out = io.StringIO()  # isatty() is False: tqdm's auto-disable
    trainer = make_regression_trainer(log_every_n_steps=5)
    trainer.fit(
        regression_batches(4), max_steps=10, max_epochs=None, callbacks=[ProgressBarCallback(file=out)]
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in out.getvalue()
    assert lines[0].startswith("step 10/10 | loss=") and lines[0].endswith("steps/s")

    out = io.StringIO()
    trainer.fit(regression_batches(4), max_steps=12, max_epochs=None,
                callbacks=[ProgressBarCallback(file=out, disable=True)])  # fmt: skip
    assert out.getvalue() == ""


# ---------------------------------------------------------------------- #
# Early stopping
# ---------------------------------------------------------------------- #
def _fit_scores(scores, stopper, **config):
    trainer = make_regression_trainer(log_every_n_steps=1, **config)
    trainer.fit(scored_batches(scores), callbacks=[stopper])
    return trainer


def _first_stop(stopper: EarlyStopping, values) -> int | None:
    """1-based index of the value at which ``stopper`` asks to stop, or None."""
    for i, value in enumerate(values, start=1):
        if stopper.evaluate(value) is not None:
            return i
    return None


def test_early_stopping_in_fit_stops_after_patience_without_min_delta_improvement():
    # min: 1.0 best; 0.95 is not better by > 0.1 -> waits 1, 2, 3 -> stop at step 4
    stopper = EarlyStopping("score", mode="min", patience=3, min_delta=0.1)
    trainer = _fit_scores([1.0, 0.95, 0.92, 0.91, 0.5, 0.4], stopper)
    assert trainer.global_step == 4 and stopper.stopped_step == 4 and trainer.should_stop
    assert stopper.best == 1.0 and "did not improve" in stopper.stop_reason


def test_early_stopping_rules():
    # an improvement resets the counter
    assert _first_stop(EarlyStopping("s", mode="max", patience=2), [1.0, 0.5, 2.0, 1.5, 1.9, 3.0]) == 5
    # min_delta: 0.95 is within the margin of 1.0 and does not count as an improvement
    assert _first_stop(EarlyStopping("s", patience=2, min_delta=0.1), [1.0, 0.95, 0.92]) == 3
    assert _first_stop(EarlyStopping("s", patience=2, min_delta=0.01), [1.0, 0.95, 0.9]) is None

    stopper = EarlyStopping("s", mode="max", stopping_threshold=0.9)
    assert _first_stop(stopper, [0.1, 0.5, 0.9, 0.95, 0.99]) == 4  # strictly past the threshold
    stopper = EarlyStopping("s", mode="min", divergence_threshold=10.0, patience=100)
    assert _first_stop(stopper, [1.0, 5.0, 11.0, 1.0]) == 3 and "diverged" in stopper.evaluate(12.0)
    assert _first_stop(EarlyStopping("s", patience=100), [1.0, float("inf"), 0.5]) == 2
    assert _first_stop(EarlyStopping("s", patience=100, check_finite=False), [1.0, float("inf"), 0.5]) is None


def test_early_stopping_non_finite_in_fit():
    stopper = EarlyStopping("score", patience=100)
    assert _fit_scores([1.0, float("nan"), 0.5], stopper).global_step == 2
    assert stopper.stopped_step == 2 and "not finite" in stopper.stop_reason


def test_early_stopping_state_and_misconfiguration():
    stopper = EarlyStopping("score", patience=5)
    for value in (3.0, 2.0, 2.5, 2.4):
        assert stopper.evaluate(value) is None
    state = json.loads(json.dumps(stopper.state_dict()))
    assert state["best"] == 2.0 and state["wait_count"] == 2
    other = EarlyStopping("score", patience=5)
    other.load_state_dict(state)
    assert (other.best, other.wait_count) == (2.0, 2)

    with pytest.raises(KeyError, match="'nope', which is not among the logged metrics"):
        make_regression_trainer(log_every_n_steps=1).fit(
            regression_batches(2), callbacks=[EarlyStopping("nope")]
        )
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping("x", mode="up")


# ---------------------------------------------------------------------- #
# Metrics logger
# ---------------------------------------------------------------------- #
def test_metrics_logger_rows_csv_png_and_resume_truncation(tmp_path):
    run_dir = tmp_path / "run"
    recorder = Recorder()
    logger = MetricsLogger(str(run_dir))
    trainer = make_regression_trainer(log_every_n_steps=4)
    trainer.fit(regression_batches(8), max_steps=16, max_epochs=None, callbacks=[recorder, logger])

    rows = logger.rows()
    assert [r["step"] for r in rows] == [4, 8, 12, 16]
    assert rows == [{"step": s, **m} for s, m in recorder.logs]  # exact floats via JSON
    csv_lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "step,loss,mae,skipped_step" and len(csv_lines) == 5
    png = (run_dir / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "l1/kernel" in (run_dir / "parameters.txt").read_text()

    # A run resumed at step 8 drops the rows after 8, keeps the rest, and appends.
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "loss": 1')  # a line cut short by a crash
    resumed = make_regression_trainer(log_every_n_steps=4)
    resumed.global_step = 8  # as after loading a checkpoint of step 8
    logger2 = MetricsLogger(str(run_dir), plot=False)
    resumed.fit(regression_batches(8), max_steps=12, max_epochs=None, callbacks=[logger2])
    assert [r["step"] for r in logger2.rows()] == [4, 8, 12]
