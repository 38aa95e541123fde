"""The examples run and do what their docstrings say."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

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


@pytest.mark.parametrize("page", ["reinforce.md", "ppo.md"])
def test_docs_code_block_runs(page):
    """The self-contained python blocks of the trainer pages run as written."""
    text = (EXAMPLES.parent / "docs" / "trainers" / page).read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert blocks, f"no python block in {page}"
    for block in blocks:
        exec(compile(block, page, "exec"), {})
