"""PPO and REINFORCE learn gymnax CartPole-v1 through fit(); bad set-ups fail before compiling."""

from __future__ import annotations

import collections
import dataclasses
import json

import numpy as np
import pytest

from artifex_rl.envs import gymnax_rollout
from artifex_rl.events import Callback
from artifex_rl.recipes.cartpole import EnvRunSettings, build_ppo, build_reinforce, train
from artifex_rl.rl import PPOConfig, REINFORCEConfig


class ReturnCurve(Callback):
    def __init__(self):
        self.returns: list[float] = []

    def on_log(self, trainer, metrics, step):
        if "episode_return" in metrics:
            self.returns.append(metrics["episode_return"])


def _first_and_last(curve: list[float]) -> tuple[float, float]:
    assert len(curve) >= 6, curve
    return float(np.mean(curve[:2])), float(np.mean(curve[-3:]))


def test_ppo_learns_cartpole_in_100k_steps(monkeypatch):
    # Sources with equal settings share one compiled collection (and its trace
    # count) across the process; start from an empty cache so the count below is
    # this run's alone whatever ran before in this worker.
    monkeypatch.setattr(gymnax_rollout, "_SHARED", collections.OrderedDict())
    settings = EnvRunSettings("CartPole-v1", 102_400, 4, 128, 2.5e-4, True, log_every=10)
    trainer, source = build_ppo(settings, PPOConfig(log_every_n_steps=10), seed=0)
    curve = ReturnCurve()
    summary = train(trainer, source, settings, [curve])
    first, last = _first_and_last(curve.returns)
    # A random policy balances ~20 steps; the maximum is 500.
    assert first < 60
    assert last > 150 and last > 4 * first, curve.returns
    assert summary["total_env_steps"] == 102_400
    assert trainer.trace_count == 1 and source.trace_count == 1


def test_reinforce_learns_cartpole_in_100k_steps():
    settings = EnvRunSettings("CartPole-v1", 100_000, 8, 256, 3e-3, True, log_every=4)
    config = REINFORCEConfig(log_every_n_steps=4, max_grad_norm=1.0)
    trainer, source = build_reinforce(settings, config, seed=0)
    curve = ReturnCurve()
    train(trainer, source, settings, [curve])
    first, last = _first_and_last(curve.returns)
    assert last > 100 and last > 3 * first, curve.returns


def test_cli_writes_metrics_summary_plot_and_checkpoint(tmp_path):
    from artifex_rl.cli import main

    run_dir = tmp_path / "run"
    code = main(["train", "cartpole-ppo", "--total-timesteps", "20480", "--seed", "1",
                 "--run-dir", str(run_dir), "--log-every", "5", "--no-progress"])
    assert code == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    for row in rows:
        assert {"step", "env_steps", "sps", "loss"} <= set(row)
        assert row["env_steps"] == row["step"] * 512
    assert any("episode_return" in r for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"final_episode_return", "total_env_steps", "wall_seconds", "compile_seconds", "sps"} <= set(summary)
    assert summary["total_env_steps"] == 40 * 512
    assert 0 < summary["compile_seconds"] <= summary["wall_seconds"]
    assert 0 < summary["first_call_seconds"] <= summary["wall_seconds"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["command"].startswith("artifex-rl train cartpole-ppo --total-timesteps 20480")
    assert config["trainer"]["class"] == "PPOTrainer" and config["run"]["env"] == "CartPole-v1"
    assert list(run_dir.glob("*.png")), "no learning-curve plot"
    assert (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())


def test_unknown_environment_is_rejected_with_the_valid_names():
    settings = EnvRunSettings("CartPole-v9", 1000, 4, 128, 2.5e-4, True)
    with pytest.raises(ValueError, match=r"CartPole-v9.*CartPole-v1"):
        build_ppo(settings, PPOConfig(), seed=0)


def test_indivisible_minibatches_are_rejected_before_compiling():
    settings = EnvRunSettings("CartPole-v1", 1000, 3, 7, 2.5e-4, True)
    with pytest.raises(ValueError, match=r"3 \* 7 = 21 is not divisible by num_minibatches=4"):
        build_ppo(settings, PPOConfig(), seed=0)


def test_action_space_mismatch_is_rejected_before_compiling():
    settings = EnvRunSettings("Pendulum-v1", 1000, 4, 128, 2.5e-4, True)
    # A discrete (categorical) policy on a continuous-action environment.
    with pytest.raises((ValueError, TypeError), match=r"Pendulum-v1"):
        build_ppo(settings, PPOConfig(), seed=0)


def test_settings_are_plain_data():
    settings = EnvRunSettings("CartPole-v1", 500_000, 4, 128, 2.5e-4, True)
    assert settings.iterations == 976 and settings.steps_per_iteration == 512
    assert dataclasses.asdict(settings)["env_name"] == "CartPole-v1"


def test_compile_timer_counts_jax_compilations_only_while_listening():
    import jax
    import jax.numpy as jnp

    from artifex_rl.recipes.env_runs import CompileTimer

    timer = CompileTimer()
    timer.on_train_begin(None)
    jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.ones(7)).block_until_ready()
    counted = timer.compile_seconds
    assert counted > 0
    timer.on_exception(None, RuntimeError("stop"))  # the listener goes with the run
    jax.jit(lambda x: jnp.cos(x) - 2.0)(jnp.ones(5)).block_until_ready()
    assert timer.compile_seconds == counted
    timer.on_exception(None, RuntimeError("again"))  # a second stop is harmless
