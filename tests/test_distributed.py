"""Trainers on a device mesh (issue 13): 8 forced host devices against one device.

The checks run in subprocesses (``tests/_distributed_checks.py``, three
groups) because ``--xla_force_host_platform_device_count`` must be set before
JAX starts; each test below asserts one of their results. A check compares a trainer on
``make_mesh()`` (8 devices; parameters replicated or FSDP-split) with the same
trainer on one device: the parameters after the step(s) agree within
``rtol=1e-5`` (reductions run in another order over 8 devices).

The single-process sharding rules (``fsdp_spec``, config validation) are
tested in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optax
import pytest
from jax.sharding import PartitionSpec as P

from artifex_rl import TrainerConfig
from artifex_rl.distributed import fsdp_spec, make_mesh

ROOT = Path(__file__).resolve().parents[1]


# The checks in three subprocesses of about a minute each (by key prefix), each
# started by the first test that needs one of its results.
GROUPS = {
    "steps": ("one_step/",),
    "loops": ("accumulation_and_chunks/", "fused_cartpole/replicated", "two_models/", "summary", "diffusion/"),
    "restore": ("checkpoint/", "grpo_online/", "fused_cartpole/fsdp"),
}


class MeshChecks:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.results: dict[str, dict] = {}

    def run_group(self, group: str) -> None:
        out = self.tmp / f"{group}.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env.pop("XLA_FLAGS", None)
        env["ARTIFEX_CHECKS"] = ",".join(GROUPS[group])
        proc = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "_distributed_checks.py"), str(out)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        self.results.update(json.loads(out.read_text()))

    def __getitem__(self, key: str) -> dict:
        if key not in self.results:
            group = next(g for g, prefixes in GROUPS.items() if key.startswith(prefixes))
            self.run_group(group)
        assert key in self.results, f"check {key!r} did not run: {sorted(self.results)}"
        return self.results[key]


@pytest.fixture(scope="session")
def mesh_checks(tmp_path_factory) -> MeshChecks:
    return MeshChecks(tmp_path_factory.mktemp("distributed"))


def _assert_check(mesh_checks: MeshChecks, key: str) -> None:
    result = mesh_checks[key]
    assert result["ok"], result["detail"]


@pytest.mark.parametrize("mode", ["replicated", "fsdp"])
@pytest.mark.parametrize("name", ["reinforce", "ppo", "grpo", "dpo"])
def test_one_step_on_8_devices_equals_one_device(mesh_checks, name, mode):
    _assert_check(mesh_checks, f"one_step/{name}/{mode}")


def test_accumulation_and_steps_per_execution_on_the_mesh(mesh_checks):
    _assert_check(mesh_checks, "accumulation_and_chunks/fsdp")


@pytest.mark.parametrize("mode", ["replicated", "fsdp"])
def test_fused_cartpole_ppo_on_8_devices_equals_one_device(mesh_checks, mode):
    _assert_check(mesh_checks, f"fused_cartpole/{mode}")


@pytest.mark.parametrize("direction", ["8to1", "1to8"])
def test_checkpoint_restores_onto_another_mesh_and_continues(mesh_checks, direction):
    _assert_check(mesh_checks, f"checkpoint/{direction}")


@pytest.mark.parametrize("reward", ["jit_reward", "host_reward"])
def test_online_grpo_on_8_devices_equals_one_device(mesh_checks, reward):
    """Sampling, scoring and the update on the mesh: the same completions and parameters."""
    _assert_check(mesh_checks, f"grpo_online/{reward}")


def test_two_models_phases_and_ema_on_the_mesh(mesh_checks):
    _assert_check(mesh_checks, "two_models/fsdp")


@pytest.mark.parametrize("mode", ["replicated", "fsdp"])
def test_a_generative_trainer_on_8_devices_equals_one_device(mesh_checks, mode):
    _assert_check(mesh_checks, f"diffusion/{mode}")


def test_sharding_summary_shows_the_split_batch(mesh_checks):
    _assert_check(mesh_checks, "summary")


def test_fsdp_spec_splits_the_largest_divisible_axis():
    assert fsdp_spec((16, 64), 8) == P(None, "data")
    assert fsdp_spec((64, 16), 8) == P("data")
    assert fsdp_spec((24, 16), 8) == P("data")  # the larger of two divisible axes
    assert fsdp_spec((16, 16), 8) == P("data")  # equal sizes: the first
    assert fsdp_spec((3, 5), 8) == P()  # nothing divides: replicated
    assert fsdp_spec((4,), 8) == P()  # smaller than the axis
    assert fsdp_spec((), 8) == P()
    assert fsdp_spec((16, 64), 1) == P()


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="param_sharding"):
        TrainerConfig(param_sharding="zero3")
    with pytest.raises(ValueError, match="data must be -1 or an int"):
        make_mesh(data=10_000)


def test_initialize_without_a_coordinator_is_a_single_process_run(monkeypatch):
    from artifex_rl.distributed import initialize

    for name in ("ARTIFEX_COORDINATOR", "ARTIFEX_NUM_PROCESSES", "ARTIFEX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert initialize() is False
    monkeypatch.setenv("ARTIFEX_COORDINATOR", "127.0.0.1:1234")
    with pytest.raises(ValueError, match="num_processes and process_id"):
        initialize()
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\), got 2"):
        initialize(num_processes=2, process_id=2)
    monkeypatch.setenv("ARTIFEX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="ARTIFEX_NUM_PROCESSES must be an int, got 'two'"):
        initialize()


def test_a_mesh_of_one_device_trains_like_no_mesh_and_bad_meshes_are_named():
    import jax
    import numpy as np
    from flax import nnx
    from jax.sharding import Mesh

    from tests._models import RegressionTrainer, TinyMLP, regression_batches

    batches = regression_batches(3, 16)
    plain = RegressionTrainer(TinyMLP(rngs=nnx.Rngs(0)), optax.adam(1e-2))
    meshed = RegressionTrainer(TinyMLP(rngs=nnx.Rngs(0)), optax.adam(1e-2), mesh=make_mesh(data=1))
    for batch in batches:
        plain.train_step(batch)
        meshed.train_step(batch)
    for a, b in zip(jax.tree.leaves(plain.train_state["params"]), jax.tree.leaves(meshed.train_state["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert "mesh {'data': 1}" in meshed.sharding_summary(batches[0])
    assert plain.sharding_summary().startswith("sharding: no mesh")

    model = TinyMLP(rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        RegressionTrainer(model, optax.adam(1e-2), mesh="data")
    with pytest.raises(ValueError, match=r"axis named 'data'; it has axes \('model',\)"):
        RegressionTrainer(model, optax.adam(1e-2), mesh=Mesh(np.asarray(jax.devices()[:1]), ("model",)))
