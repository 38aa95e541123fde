"""TensorBoardLogger writes event files that read back (scalars, images, text, hparams) without TensorFlow."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("tensorboardX")

from artifex_rl.callbacks import SampleTableLogger, TensorBoardLogger  # noqa: E402
from artifex_rl.callbacks.tensorboard import flatten_hparams, image_grid  # noqa: E402
from artifex_rl.config import TrainerConfig  # noqa: E402
from tests._tb_events import hparams_session_start, images, read_events, scalars, texts  # noqa: E402


def fake_trainer(step: int = 0, callbacks=()):
    return SimpleNamespace(config=TrainerConfig(log_every_n_steps=5, seed=3), global_step=step,
                           callbacks=list(callbacks), last_outputs=None)


def test_scalars_read_back_with_their_steps_and_values(tmp_path):
    rng = np.random.default_rng(0)
    logged = {step: {"loss": float(rng.normal()), "episode_return": float(rng.uniform(0, 500))}
              for step in (5, 10, 15)}
    tb = TensorBoardLogger(str(tmp_path), hparams={"env": "Acrobot-v1", "settings": {"hidden": (64, 64)}})
    trainer = fake_trainer()
    tb.on_train_begin(trainer)
    for step, metrics in logged.items():
        tb.on_log(trainer, {**metrics, "flag": True, "note": "text"}, step)  # non-numbers skipped
    trainer.global_step = 15
    tb.on_train_end(trainer)

    got = scalars(read_events(tmp_path))
    assert set(got) == {"loss", "episode_return"}
    for key in ("loss", "episode_return"):
        steps = [s for s, _ in got[key]]
        values = np.array([v for _, v in got[key]])
        assert steps == [5, 10, 15]
        # Event files store float32.
        np.testing.assert_allclose(values, [logged[s][key] for s in steps], rtol=1e-6)


def test_hyper_parameters_are_the_flattened_run_config_and_trainer_config(tmp_path):
    tb = TensorBoardLogger(str(tmp_path), hparams={"env": "Acrobot-v1", "settings": {"hidden": (64, 64),
                                                                                      "anneal_lr": True}})
    tb.on_train_begin(fake_trainer())
    tb.on_train_end(fake_trainer(1))
    events = read_events(tmp_path)
    hp = hparams_session_start(events)
    assert hp["env"] == "Acrobot-v1"
    assert hp["settings/hidden"] == "[64, 64]"
    assert hp["settings/anneal_lr"] is True
    assert hp["trainer/class"] == "SimpleNamespace"
    assert hp["trainer/log_every_n_steps"] == 5.0 and hp["trainer/seed"] == 3.0
    assert "trainer/max_grad_norm" not in hp  # TrainerConfig's None: TensorBoard has no null
    config_text = texts(events)["config"][0][1]
    assert '"env": "Acrobot-v1"' in config_text and '"log_every_n_steps": 5' in config_text


def test_flatten_hparams_keeps_tensorboard_types():
    flat = flatten_hparams({"a": {"b": 1, "c": {"d": 0.5}}, "e": None, "f": [1, 2], "g": "x", "h": False})
    assert flat == {"a/b": 1, "a/c/d": 0.5, "f": "[1, 2]", "g": "x", "h": False}


def test_image_grid_matches_a_direct_tiling():
    rng = np.random.default_rng(1)
    imgs = rng.uniform(-0.2, 1.2, size=(5, 3, 4))  # out-of-range values are clipped
    grid = image_grid(imgs, ncols=3, pad=1)
    assert grid.shape == (2 * 4 + 1, 3 * 5 + 1, 1) and grid.dtype == np.uint8
    want = np.zeros((9, 16), np.uint8)
    for i in range(5):
        r, c = divmod(i, 3)
        tile = np.round(np.clip(imgs[i], 0, 1) * 255).astype(np.uint8)
        want[1 + r * 4 : 1 + r * 4 + 3, 1 + c * 5 : 1 + c * 5 + 4] = tile
    np.testing.assert_array_equal(grid[..., 0], want)
    # Digit samples live in [-1, 1]: -1 -> 0, 0 -> 128 (127.5 rounded to even), 1 -> 255.
    np.testing.assert_array_equal(image_grid(np.array([[[-1.0, 0.0, 1.0]]]), pad=0, value_range=(-1, 1))[..., 0],
                                  [[0, 128, 255]])
    with pytest.raises(ValueError, match=r"images must have shape .* got \(3, 4\)"):
        image_grid(np.zeros((3, 4)))


def test_sample_grids_are_logged_as_images(tmp_path):
    rng = np.random.default_rng(2)
    samples = rng.integers(0, 256, size=(4, 6, 6, 3), dtype=np.uint8)
    tb = TensorBoardLogger(str(tmp_path))
    tb.on_train_begin(fake_trainer())
    tb.log_images("samples", samples, step=20)
    tb.on_train_end(fake_trainer(20))
    (step, img), = images(read_events(tmp_path))["samples"]
    assert step == 20
    np.testing.assert_array_equal(img, image_grid(samples))


def test_sample_tables_arrive_through_the_log_table_protocol(tmp_path):
    class Digits:
        def decode(self, ids, stop_at_eos=False):
            return "".join(str(int(i)) for i in ids)

    tb = TensorBoardLogger(str(tmp_path))
    table = SampleTableLogger(Digits(), None, every_n_logs=1, num_rows=2)
    trainer = fake_trainer(callbacks=[table, tb])
    tb.on_train_begin(trainer)
    table.on_train_batch_start(trainer, {"observations": np.array([[1, 2]]),
                                         "actions": np.array([[3, 4], [5, 6]]),
                                         "rewards": np.array([1.0, 0.0])}, 0)
    table.on_log(trainer, {}, 10)
    tb.on_train_end(trainer)
    (step, text), = texts(read_events(tmp_path))["samples"]
    assert step == 10
    assert "| step | prompt | completion | reward |" in text and "| 10 | 12 | 34 | 1.0 |" in text


def test_a_failing_writer_warns_once_and_training_goes_on(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    tb = TensorBoardLogger(str(blocker / "tb"))  # cannot be created
    trainer = fake_trainer()
    with caplog.at_level(logging.WARNING):
        tb.on_train_begin(trainer)
        tb.on_log(trainer, {"loss": 1.0}, 5)
        tb.log_images("x", np.zeros((1, 2, 2)), 5)
        tb.on_train_end(trainer)
    warnings = [r for r in caplog.records if "TensorBoard logging disabled" in r.getMessage()]
    assert len(warnings) == 1 and tb.writer is None


def test_a_write_error_mid_run_disables_the_logger(tmp_path, caplog):
    tb = TensorBoardLogger(str(tmp_path))
    trainer = fake_trainer()
    tb.on_train_begin(trainer)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    tb.writer.add_scalar = broken
    with caplog.at_level(logging.WARNING):
        tb.on_log(trainer, {"loss": 1.0}, 5)
        tb.on_log(trainer, {"loss": 2.0}, 10)
    warnings = [r.getMessage() for r in caplog.records if "TensorBoard logging disabled" in r.getMessage()]
    assert len(warnings) == 1 and "disk full" in warnings[0]
    assert tb.writer is None


def test_without_tensorboardx_the_warning_says_how_to_install(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import raises ImportError
    tb = TensorBoardLogger(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        tb.on_train_begin(fake_trainer())
        tb.on_log(fake_trainer(), {"loss": 1.0}, 5)
    (message,) = [r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert "artifex_rl[tensorboard]" in message


def test_it_is_a_pure_logger():
    assert TensorBoardLogger.log_may_lag is True
