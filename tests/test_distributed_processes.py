"""Two local processes on JAX's distributed runtime fit one trainer data-parallel (issue 13).

Each worker (``tests/_two_process_worker.py``) joins a run on 127.0.0.1 with
gloo collectives and two forced host devices, feeds its half of every global
batch, fits 4 steps on the 4-device mesh and saves a checkpoint. The result
must equal ONE process (one device) fitted on the same global batches, and
the two-process checkpoint must restore in a single process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl import TrainerConfig
from artifex_rl.checkpoint.io import load_model, read_checkpoint_metadata
from artifex_rl.models import ActorCritic
from tests._models import RegressionTrainer, TinyMLP, regression_batches

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_two_process_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(out: Path, mode: str) -> list[str]:
    port = str(_free_port())
    return _run_both([[sys.executable, str(WORKER), str(i), port, str(out), mode] for i in range(2)])


def _run_both(commands: list[list[str]], env_extra: dict[str, str] | None = None) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **(env_extra or {})}
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in commands
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-4000:]}"
    return logs


def _one_process_reference() -> RegressionTrainer:
    trainer = RegressionTrainer(TinyMLP(4, 16, 1, rngs=nnx.Rngs(0)), optax.adam(1e-2), TrainerConfig())
    trainer.fit(regression_batches(4, 16, in_dim=4), max_steps=4)
    return trainer


def _flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("mode", ["replicated", "fsdp"])
def test_two_processes_equal_one_process_and_their_checkpoint_restores(tmp_path, mode):
    _run_two_processes(tmp_path, mode)
    reference = _one_process_reference()
    want = _flat(reference.train_state["params"])
    got = dict(np.load(tmp_path / "params.npz"))
    assert sorted(got) == sorted(want)
    assert not np.allclose(want["['model']['l1']['kernel']"], _flat(_initial_params())["['model']['l1']['kernel']"])
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)

    restored = RegressionTrainer(TinyMLP(4, 16, 1, rngs=nnx.Rngs(1)), optax.adam(1e-2), TrainerConfig())
    restored.load_checkpoint(str(tmp_path / "ckpt"))
    assert restored.global_step == 4
    for key, value in _flat(restored.train_state["params"]).items():
        np.testing.assert_allclose(value, want[key], rtol=1e-5, atol=1e-6, err_msg=key)


def _initial_params():
    return RegressionTrainer(TinyMLP(4, 16, 1, rngs=nnx.Rngs(0)), optax.adam(1e-2), TrainerConfig()).train_state["params"]


def test_the_cli_trains_an_env_recipe_on_two_processes_and_process_0_writes_the_run(tmp_path):
    """``artifex-rl train ppo ... --coordinator --num-processes --process-id`` on two local processes."""
    port = _free_port()
    run_dir = tmp_path / "run"
    commands = [
        [sys.executable, "-m", "artifex_rl.cli", "train", "ppo", "--env", "CartPole-v1", "--total-timesteps", "512",
         "--num-envs", "8", "--num-steps", "32", "--run-dir", str(run_dir), "--no-progress",
         "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
        for i in range(2)
    ]
    logs = _run_both(commands, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"})
    assert "run directory:" in logs[0] and "run directory:" not in logs[1]
    assert "mesh {'data': 4} over 4 cpu devices, 2 process(es)" in logs[0]
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoints/index.json"):
        assert (run_dir / name).is_file(), name
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    path = run_dir / "checkpoints" / index["last"]
    assert read_checkpoint_metadata(path)["global_step"] == 2  # 512 env steps / (8 envs x 32 steps)
    hidden = tuple(json.loads((run_dir / "config.json").read_text())["run"]["settings"]["hidden"])
    model = load_model(path, lambda: ActorCritic(4, 2, hidden, rngs=nnx.Rngs(1)))  # on one device
    assert not np.allclose(model.critic_head.kernel[...], ActorCritic(4, 2, hidden, rngs=nnx.Rngs(1)).critic_head.kernel[...])
