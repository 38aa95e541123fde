"""The digits RL recipes end to end, shrunk: a 2-step base run, then GRPO / REINFORCE on its chain."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

import artifex_rl.recipes.digits.common as digits_common
import artifex_rl.recipes.digits.rl as chain_rl
from artifex_rl.cli import main
from artifex_rl.metrics import train_digit_classifier
from artifex_rl.recipes.digits.diffusion import DIFFUSION, run_denoiser_recipe

SAMPLES = 20


def _quick_classifier(seed=0, width=16, *, cache_dir=None, steps=5):
    return train_digit_classifier(seed, width, cache_dir=cache_dir, steps=5)


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory):
    """Tiny models, few samples, 5-step classifiers; one shared 2-step unconditional base run."""
    patch = pytest.MonkeyPatch()
    patch.setattr(digits_common, "NUM_SAMPLES", SAMPLES)
    patch.setattr(digits_common, "train_digit_classifier", _quick_classifier)
    patch.setattr(chain_rl, "NUM_SAMPLES", SAMPLES)
    patch.setattr(chain_rl, "train_digit_classifier", _quick_classifier)
    patch.setattr(chain_rl, "SETTINGS",
                  chain_rl.ChainRLSettings(num_prompts=2, group_size=2, chain_steps=3, dpo_pairs=8))
    patch.setattr("artifex_rl.recipes.digits.diffusion.NUM_SAMPLES", SAMPLES)
    root = tmp_path_factory.mktemp("chain_rl")
    base = str(root / "base")
    settings = dataclasses.replace(DIFFUSION, channels=(8, 16), sampler={**DIFFUSION.sampler, "num_steps": 3})
    args = type("Args", (), dict(recipe="digits-diffusion", seed=0, run_dir=base, steps=2, unconditional=True,
                                 wandb_mode="disabled", no_progress=True))()
    run_denoiser_recipe(args, "diffusion", settings)
    yield root, base
    patch.undo()


# digits-reinforce-diffusion and digits-ppo-diffusion differ from GRPO only in the trainer they build
# (tested on the chain in test_chain_rl.py); Diffusion-DPO also builds its preference pairs.
@pytest.mark.parametrize("recipe", ["digits-grpo-diffusion", "digits-dpo-diffusion"])
def test_the_chain_rl_recipe_writes_its_run_directory(shrunk, recipe):
    root, base = shrunk
    run_dir = str(root / recipe)
    assert main(["train", recipe, "--base-run", base, "--steps", "2", "--target-digit", "7", "--run-dir", run_dir,
                 "--no-progress"]) == 0
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    for key in ("initial_mean_reward", "final_mean_reward", "initial_cfd_target", "final_cfd_target",
                "final_kl", "wall_seconds", "initial_class_accuracy", "final_class_accuracy"):
        assert np.isfinite(summary[key]), key
    assert 0.0 <= summary["final_mean_reward"] <= 1.0
    assert summary["target_digit"] == 7 and summary["steps"] == 2
    # GRPO: 2 steps x 2 prompts x 2 chains; DPO: 8 pairs, each the best and worst of 2 samples.
    assert summary["reward_evaluations"] == (8 * 2 if recipe == "digits-dpo-diffusion" else 2 * 2 * 2)
    for name in ("samples_before", "samples_after"):
        saved = np.load(os.path.join(run_dir, f"{name}.npz"))
        assert saved["images"].shape == (SAMPLES, 8, 8, 1) and (saved["labels"] == -1).all()
        assert os.path.exists(os.path.join(run_dir, f"{name}.png"))
    assert os.path.exists(os.path.join(run_dir, "before_after.png"))
    with open(os.path.join(run_dir, "config.json")) as f:
        assert "--target-digit 7" in json.load(f)["command"]


def test_a_conditional_run_refuses_an_unconditional_base(shrunk):
    root, base = shrunk
    with pytest.raises(ValueError, match="unconditional model"):
        main(["train", "digits-grpo-diffusion", "--base-run", base, "--conditional", "--steps", "1",
              "--run-dir", str(root / "refused"), "--no-progress"])


def test_a_base_run_that_is_not_a_denoiser_run_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        main(["train", "digits-grpo-flow", "--base-run", str(tmp_path), "--steps", "1",
              "--run-dir", str(tmp_path / "run"), "--no-progress"])
