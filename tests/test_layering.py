"""The low layers know no trainer, and the old import paths still re-export the moved names."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TRAINER_MODULES = {
    "artifex_rl.trainer",
    "artifex_rl.autoregressive",
    "artifex_rl.rl.base",
    "artifex_rl.rl.reinforce",
    "artifex_rl.rl.ppo",
    "artifex_rl.rl.grpo",
    "artifex_rl.rl.dpo",
}


def loaded_after_import(module: str) -> set[str]:
    """The artifex_rl modules in ``sys.modules`` after importing ``module`` in a fresh interpreter."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(k for k in sys.modules if k.startswith('artifex_rl'))))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "module",
    [
        "artifex_rl.tasks",
        "artifex_rl.envs",
        "artifex_rl.distributions",
        "artifex_rl.rewards",
        "artifex_rl.batches",
        "artifex_rl.rl.losses",
        "artifex_rl.rl.configs",
        "artifex_rl.rl.utils",
    ],
)
def test_low_layers_import_no_trainer(module):
    loaded = loaded_after_import(module)
    assert module in loaded
    assert not loaded & TRAINER_MODULES, sorted(loaded & TRAINER_MODULES)


def test_the_package_still_exports_the_trainers():
    import artifex_rl

    assert artifex_rl.PPOTrainer.__name__ == "PPOTrainer"
    assert set(artifex_rl.__all__) <= set(dir(artifex_rl))
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchTrainer'"):
        artifex_rl.NoSuchTrainer  # noqa: B018


# The seeds import these from artifex.generative_models.training.rl.utils (-> artifex_rl.rl.utils).
SEED_UTILS = {
    "compute_discounted_returns": ["rewards", "gamma"],
    "compute_gae_advantages": ["rewards", "values", "dones", "gamma", "gae_lambda"],
    "normalize_advantages": [],
    "compute_policy_entropy": [],
    "compute_kl_divergence": [],
    "compute_clipped_surrogate_loss": ["log_probs", "old_log_probs", "advantages", "clip_param"],
}


@pytest.mark.parametrize("name", sorted(SEED_UTILS))
def test_seed_utils_keep_their_path_and_keywords(name):
    from artifex_rl.rl import losses, utils

    fn = getattr(utils, name)
    assert fn is getattr(losses, name)
    params = inspect.signature(fn).parameters
    assert list(params)[: len(SEED_UTILS[name])] == SEED_UTILS[name]


def test_old_paths_reexport_the_moved_names():
    from artifex_rl import batches, distributions, rewards
    from artifex_rl.rl import batch, policies
    from artifex_rl.rl import rewards as old_rewards

    for name in policies.__all__:
        assert getattr(policies, name) is getattr(distributions, name)
    for name in old_rewards.__all__:
        assert getattr(old_rewards, name) is getattr(rewards, name)
    for name in batch.__all__:
        home = distributions if name == "score_sequences" else batches
        assert getattr(batch, name) is getattr(home, name)
    assert not hasattr(batch, "score_actions")
