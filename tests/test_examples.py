"""The examples run and do what their docstrings say."""

from __future__ import annotations

import importlib.util
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_trainer_example_fits_the_sine():
    before, after = load("custom_trainer").main(max_epochs=10)
    assert after < 0.2 * before


def test_every_trainer_learns_the_bandit_example():
    results = load("bandit_trainers").main()
    assert set(results) == {"REINFORCE", "PPO", "GRPO", "DPO"}
    for name, (before, after) in results.items():
        assert before < 0.4, name
        assert after > 0.85, f"{name}: {before:.2f} -> {after:.2f}"


# The docs' code blocks (the trainer pages included) run in tests/test_docs.py.
