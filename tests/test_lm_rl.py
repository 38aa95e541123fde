"""RL on a tiny causal LM: GRPO online, DPO, REINFORCE improve a pre-trained policy; the CLI recipe.

One small pre-training (module fixture, through the recipe's own cache) gives
every test the same starting policy on DigitSum: it writes four digits then
EOS but gets the sum right only part of the time. Learning tests are short
versions of the recipes and assert a clear improvement of the task reward on
a fixed evaluation prompt set.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl.callbacks.samples import SampleTableLogger
from artifex_rl.events import Callback
from artifex_rl.models.transformer import generate
from artifex_rl.recipes import lm
from artifex_rl.rl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, REINFORCEConfig, REINFORCETrainer
from artifex_rl.rl.batch import score_sequences
from artifex_rl.rl.generation import score_completions
from artifex_rl.tasks import DigitSumTask

SETTINGS = lm.LMSettings(
    task="digit_sum",
    pretrain=lm.PretrainSettings(noise=0.7, steps=80, batch_size=128, learning_rate=3e-3),
    eval_prompts=256,
)


class Pretrained(NamedTuple):
    task: Any
    graphdef: nnx.GraphDef
    state: nnx.State
    initial_reward: float
    evaluator: lm.RewardEvaluator
    cache_dir: str

    def fresh_model(self) -> nnx.Module:
        """A new model holding (copies of) the pre-trained parameters."""
        return nnx.merge(self.graphdef, jax.tree.map(jnp.array, self.state))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Pretrained:
    task = lm.make_task("digit_sum")
    cache_dir = str(tmp_path_factory.mktemp("pretrained"))
    model, info = lm.pretrain(task, SETTINGS, seed=0, cache_dir=cache_dir)
    assert info["pretrain_cached"] is False
    evaluator = lm.RewardEvaluator(task, SETTINGS.eval_prompts)
    graphdef, state = nnx.split(model)
    return Pretrained(task, graphdef, state, evaluator(model), evaluator, cache_dir)


def test_pretrained_policy_is_well_formed_imperfect_and_cached(pretrained):
    task = pretrained.task
    out = generate(
        pretrained.fresh_model(),
        task.sample_prompts(jax.random.key(5), 256)[0],
        task.answer_length,
        key=jax.random.key(6),
        eos_id=task.tokenizer.eos_id,
    )
    # It learned the format (EOS right after four digits) ...
    assert float(jnp.mean(out.lengths == task.answer_length)) > 0.9
    # ... but not the sums: room for RL.
    assert 0.2 < pretrained.initial_reward < 0.6, pretrained.initial_reward
    # A second call with the same settings loads the cached policy instead of training.
    model, info = lm.pretrain(task, SETTINGS, seed=0, cache_dir=pretrained.cache_dir)
    assert info["pretrain_cached"] is True
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model), pretrained.state)


def test_sampler_log_probs_equal_the_trainers_recomputed_log_probs(pretrained):
    """Sampling at temperature 0.7, the sampler returns log-probs under softmax(logits / 0.7):
    exactly what the GRPO update recomputes at that temperature, so its first ratio is 1."""
    task, model, p = pretrained.task, pretrained.fresh_model(), pretrained.task.prompt_length
    prompts, _ = task.sample_prompts(jax.random.key(1), 64)
    out = generate(
        model,
        prompts,
        task.answer_length,
        key=jax.random.key(2),
        temperature=0.7,
        eos_id=task.tokenizer.eos_id,
        pad_id=task.tokenizer.pad_id,
    )
    score = jax.jit(functools.partial(score_completions, temperature=0.7))
    recomputed, _ = score(model, prompts, out.tokens[:, p:])
    mask = np.asarray(out.completion_mask[:, p:])
    assert mask.sum() > 0
    np.testing.assert_allclose(
        np.asarray(recomputed) * mask, np.asarray(out.log_probs[:, p:]) * mask, atol=2e-5, rtol=0
    )


def _padded_batch(task, rng: np.random.Generator, b: int, group: int) -> tuple[dict, dict]:
    """A token GRPO batch with EOS at random places, and a copy with garbage after each EOS."""
    n = task.answer_length
    prompts = np.asarray(task.sample_prompts(jax.random.key(4), b)[0])
    lengths = rng.integers(1, n, b)  # EOS position varies per row; every row has padding
    mask = (np.arange(n)[None] < lengths[:, None]).astype(np.float32)
    completions = rng.integers(4, 14, (b, n)).astype(np.int32)
    completions[np.arange(b), lengths - 1] = task.tokenizer.eos_id
    completions = np.where(mask > 0, completions, task.tokenizer.pad_id).astype(np.int32)
    old = np.where(mask > 0, rng.normal(-2.0, 0.3, (b, n)), 0.0).astype(np.float32)
    ref = np.where(mask > 0, rng.normal(-2.0, 0.3, (b, n)), 0.0).astype(np.float32)
    batch = {
        "observations": prompts,
        "actions": completions,
        "completion_mask": mask,
        "log_probs": old,
        "ref_log_probs": ref,
        "rewards": rng.uniform(size=b).astype(np.float32),
        "group_size": group,
    }
    pad = mask == 0
    garbage = {
        **batch,
        "actions": np.where(pad, rng.integers(0, 16, (b, n)), completions).astype(np.int32),
        "log_probs": np.where(pad, 50.0, old).astype(np.float32),  # exp(50 - logp) would overflow if read
        "ref_log_probs": np.where(pad, -80.0, ref).astype(np.float32),
    }
    return batch, garbage


def test_padding_after_eos_never_contributes_to_loss_kl_or_entropy(pretrained):
    """Token GRPO: whatever sits after EOS (tokens, old and reference log-probs) changes nothing."""
    batch, garbage = _padded_batch(pretrained.task, np.random.default_rng(0), b=8, group=4)
    config = GRPOConfig(num_generations=4, beta=0.1, entropy_coeff=0.05, policy="tokens")
    trainer = GRPOTrainer(pretrained.fresh_model(), optax.sgd(0.1), config, reference_model=None)
    start = jax.tree.map(np.array, trainer.train_state)
    results = []
    for data in (batch, garbage):
        # Same start state for both batches, same compiled step.
        trainer.train_state = jax.tree.map(jnp.array, start)
        metrics = jax.device_get(trainer.train_step(data))
        results.append((metrics, jax.device_get(trainer.train_state["params"])))
    assert trainer.trace_count == 1
    (m1, p1), (m2, p2) = results
    for key in ("loss", "policy_loss", "kl", "kl_penalty", "entropy", "approx_kl", "clip_fraction"):
        assert np.isfinite(m1[key]), key
        np.testing.assert_allclose(m1[key], m2[key], rtol=1e-6, atol=1e-7, err_msg=key)
    assert m1["kl"] > 0 and m1["entropy"] > 0  # the real tokens do count
    jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7), p1, p2)


class _Tables(Callback):
    """Stands in for the W&B logger: records log_table calls."""

    def __init__(self):
        self.tables = []

    def log_table(self, name, columns, rows, step=None):
        self.tables.append((name, list(columns), rows, step))


def test_grpo_online_first_ratio_is_one_and_the_reward_improves(pretrained, tmp_path):
    task = pretrained.task
    config = lm.grpo_config(task, lm.GRPOSettings(), log_every=10, seed=0)
    assert config.num_iterations == 1
    trainer = GRPOTrainer(pretrained.fresh_model(), optax.adam(1e-3), config, reward_fn=task.reward_fn)
    steps = 40
    prompts = lm.PromptBatches(task, 32, steps, seed=1)

    # First step by hand: sampler log-probs == recomputed ones, and the reference is the policy itself.
    first = trainer.train_step(next(iter(prompts)))
    assert abs(float(first["approx_kl"])) < 1e-6
    assert float(first["clip_fraction"]) == 0.0
    assert abs(float(first["kl"])) < 1e-6

    tables = _Tables()
    samples = SampleTableLogger(task.tokenizer, str(tmp_path), every_n_logs=2, num_rows=4)
    trainer.fit(prompts, max_steps=steps, callbacks=[tables, samples])
    final = pretrained.evaluator(trainer.model)
    assert trainer.trace_count == 1  # sampling, reward and update: one compiled step, traced once
    assert final > pretrained.initial_reward + 0.25, (pretrained.initial_reward, final)

    # Sample tables every other log (logs at steps 10, 20, 30, 40 -> tables at 10 and 30).
    assert [t[3] for t in tables.tables] == [10, 30]
    rows = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
    assert len(rows) == 8 and {r["step"] for r in rows} == {10, 30}
    for row in rows:
        assert row["prompt"].startswith("^") and row["prompt"].endswith("|")
        digits = [int(c) for c in row["completion"] if c.isdigit()]
        if row["completion"].endswith("$") and len(digits) == 4 == len(row["completion"]) - 1:
            target = int(row["prompt"][1:3])
            assert row["reward"] == pytest.approx(max(0.0, 1 - abs(sum(digits) - target) / 10), abs=1e-6)


def test_dpo_learns_the_preferences_and_raises_the_reward(pretrained):
    task, model = pretrained.task, pretrained.fresh_model()
    # Same prompt count for both sets: one sampler compilation.
    pairs = lm.filter_pairs(lm.preference_pairs(model, task, jax.random.key(10), 2048), 0.25)
    heldout = lm.filter_pairs(lm.preference_pairs(model, task, jax.random.key(11), 2048), 0.25)
    assert np.all(pairs["chosen_reward"] >= pairs["rejected_reward"] + 0.25 - 1e-6)
    accuracy = lm.preference_accuracy_fn(pretrained.graphdef, pretrained.state)
    heldout_batch = {k: jnp.asarray(heldout[k]) for k in lm.DPO_BATCH_KEYS}
    assert float(accuracy(pretrained.state, heldout_batch)) == 0.0  # the reference ranks nothing first

    config = DPOConfig(beta=0.5, nll_coeff=0.2, policy="tokens", max_grad_norm=1.0, log_every_n_steps=50)
    trainer = DPOTrainer(model, optax.adam(1e-3), config)
    trainer.fit(lm.PairBatches(pairs, 64, seed=0), max_steps=150, max_epochs=None)
    acc = float(accuracy(nnx.state(trainer.model), heldout_batch))
    final = pretrained.evaluator(trainer.model)
    assert acc > 0.85, acc
    assert final > pretrained.initial_reward + 0.2, (pretrained.initial_reward, final)


def test_dpo_nll_term_adds_the_chosen_tokens_mean_nll(pretrained):
    """DPOConfig(nll_coeff) adds nll_coeff times the chosen tokens' mean NLL to DPO's loss.

    The reference is a copy of the policy, so on the first step every implicit
    reward is 0 and the DPO part is exactly log 2.
    """
    model = pretrained.fresh_model()
    # Any sequences do: padded random "completions" from the GRPO padding test's helper.
    chosen, rejected = _padded_batch(pretrained.task, np.random.default_rng(1), b=16, group=4)
    batch = {
        "prompts": chosen["observations"],
        "chosen": chosen["actions"],
        "chosen_mask": chosen["completion_mask"],
        "rejected": np.roll(rejected["actions"], 1, axis=0),
        "rejected_mask": np.roll(chosen["completion_mask"], 1, axis=0),
    }
    logp, _ = jax.jit(score_sequences)(model, batch["prompts"], batch["chosen"])
    nll = -float(jnp.sum(logp * batch["chosen_mask"])) / float(jnp.sum(batch["chosen_mask"]))
    trainer = DPOTrainer(model, optax.sgd(0.0), DPOConfig(beta=0.5, policy="tokens", nll_coeff=0.3))
    metrics = trainer.train_step(batch)
    np.testing.assert_allclose(float(metrics["chosen_nll"]), nll, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["dpo_loss"]), math.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["loss"]), math.log(2.0) + 0.3 * nll, rtol=1e-5)
    with pytest.raises(ValueError, match="nll_coeff must be >= 0"):
        DPOConfig(policy="tokens", nll_coeff=-1.0)


def test_reinforce_on_token_sequences_improves_the_reward(pretrained):
    task = pretrained.task
    config = REINFORCEConfig(
        normalize_returns=True, entropy_coeff=0.0, policy="tokens", max_grad_norm=1.0, log_every_n_steps=10
    )
    trainer = REINFORCETrainer(pretrained.fresh_model(), optax.adam(5e-4), config)
    source = lm.CompletionSource(trainer, task, batch_size=256, seed=3)
    trainer.fit(source, max_steps=50, max_epochs=None)
    final = pretrained.evaluator(trainer.model)
    assert final > pretrained.initial_reward + 0.25, (pretrained.initial_reward, final)
    assert trainer.trace_count == 1
    assert source.state_dict() == {"batches": 50}


@pytest.mark.parametrize(("recipe", "trainer_class", "section"), [
    ("lm-grpo", "GRPOTrainer", "grpo"), ("lm-ppo", "PPOTrainer", "ppo")])
def test_cli_lm_online_recipe_writes_metrics_summary_plot_checkpoint_and_samples(
    tmp_path, monkeypatch, recipe, trainer_class, section
):
    from artifex_rl.cli import main

    # The recipe pre-trains on 300 x 256 demonstrations by default; a tiny pre-training keeps this short.
    small = lm.LMSettings(
        task="digit_sum",
        pretrain=lm.PretrainSettings(steps=10, batch_size=32),
        eval_prompts=64,
        log_every=2,
    )
    monkeypatch.setattr(lm.runs, "_settings_from_args", lambda args: small)
    run_dir = tmp_path / "run"
    argv = [
        "train",
        recipe,
        "--steps",
        "4",
        "--log-every",
        "2",
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:
        assert {"step", "mean_reward", "loss"} <= set(row)
        assert 0.0 <= row["mean_reward"] <= 1.0 and np.isfinite(row["loss"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"initial_mean_reward", "final_mean_reward", "wall_seconds"} <= set(summary)
    assert 0.0 <= summary["final_mean_reward"] <= 1.0 and summary["wall_seconds"] > 0
    assert summary["pretrain_cached"] is False and summary["rl_steps"] == 4
    config = json.loads((run_dir / "config.json").read_text())
    assert config["command"] == "artifex-rl " + " ".join(argv)
    assert config["trainer"]["class"] == trainer_class and config["trainer"]["policy"] == "tokens"
    assert config["run"][section]["steps"] == 4
    assert os.path.exists(run_dir / "metrics.png")
    assert os.path.exists(run_dir / "samples.jsonl")
    assert os.path.exists(run_dir / "pretrained" / "settings.json")
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    assert index  # the final trainer state was checkpointed


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task 'adding'.*digit_sum"):
        lm.make_task("adding")
    with pytest.raises(ValueError, match="unknown task"):
        lm.LMSettings(task="adding")
    assert isinstance(lm.make_task("digit_sum"), DigitSumTask)
