"""Verifiable digit tasks: tokenizer, prompts, rewards, demonstrations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artifex_rl.rl.rewards import CompositeReward
from artifex_rl.tasks import (
    DigitSumCloseness,
    DigitSumTask,
    DigitTokenizer,
    SortDigitsTask,
    SortedPositionAccuracy,
    WellFormedReward,
)

TOK = DigitTokenizer()
ALPHABET = "_^$|0123456789+="


def _encode(rows: list[str]) -> jax.Array:
    width = max(len(r) for r in rows)
    return jnp.asarray([TOK.encode(r.ljust(width, "_")) for r in rows], jnp.int32)


# ------------------------------------------------ plain-Python references


def _body(text: str) -> tuple[str, bool]:
    """Text before the first '$' and whether there was one."""
    return text.split("$", 1)[0], "$" in text


def reference_digit_sum(text: str, target: int, num_digits: int = 4) -> float:
    body, has_eos = _body(text)
    digits = [int(ch) for ch in body if ch.isdigit()]
    if not digits:
        return 0.0
    closeness = max(0.0, 1.0 - abs(sum(digits) - target) / 10.0)
    well_formed = has_eos and len(body) == num_digits and len(digits) == num_digits
    return closeness if well_formed else closeness / 2


def reference_sort(text: str, target: list[int]) -> float:
    body, has_eos = _body(text)
    k = len(target)
    accuracy = sum(i < len(body) and body[i] == str(target[i]) for i in range(k)) / k
    well_formed = has_eos and len(body) == k and body.isdigit()
    return accuracy if well_formed else accuracy / 2


def _random_completions(rng: np.random.Generator, n: int, width: int, answers: list[str]) -> list[str]:
    """A mix of exact answers, corrupted answers and random strings, all ``width`` long."""
    rows = []
    for answer in answers[:n]:
        kind = rng.integers(4)
        if kind == 0:
            text = answer + "$"
        elif kind == 1:  # one character changed, or a digit dropped / added
            text = list(answer + "$")
            text[rng.integers(len(text))] = rng.choice(list("0123456789$_+"))
            text = "".join(text)
        elif kind == 2:
            text = "".join(rng.choice(list("0123456789"), size=rng.integers(0, width))) + "$"
        else:  # mostly digits, EOS maybe somewhere, maybe never
            text = "".join(rng.choice(list("0123456789$_|^"), size=width, p=[0.06] * 10 + [0.1] * 4))
        rows.append(text[:width].ljust(width, "_"))
    return rows


# --------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        text = "".join(rng.choice(list(ALPHABET), size=rng.integers(0, 20)))
        assert TOK.decode(TOK.encode(text)) == text
    ids = rng.integers(0, TOK.vocab_size, size=(5, 9))
    assert TOK.encode("".join(TOK.decode_batch(ids))) == ids.reshape(-1).tolist()
    assert TOK.encode("^12|") == [TOK.bos_id, 5, 6, TOK.sep_id]
    assert TOK.decode([7, 4, TOK.eos_id, 0, 9], stop_at_eos=True) == "30$"
    values, is_digit = TOK.ids_to_digits(jnp.asarray(TOK.encode("7$+0")))
    np.testing.assert_array_equal(values, [7, 0, 0, 0])
    np.testing.assert_array_equal(is_digit, [True, False, False, True])
    with pytest.raises(ValueError, match=r"characters \['a'\]"):
        TOK.encode("12a")


# ---------------------------------------------------------------- DigitSum


def test_digit_sum_prompts_encode_targets():
    task = DigitSumTask()
    prompts, targets = task.sample_prompts(jax.random.key(0), 64)
    assert prompts.shape == (64, task.prompt_length) and prompts.dtype == jnp.int32
    for text, target in zip(TOK.decode_batch(prompts), np.asarray(targets), strict=True):
        assert text == f"^{target:02d}|"
    assert 0 <= targets.min() and targets.max() <= task.max_target
    # Same prompts from an int seed, a numpy Generator works too.
    np.testing.assert_array_equal(task.sample_prompts(3, 8)[0], task.sample_prompts(3, 8)[0])
    assert task.sample_prompts(np.random.default_rng(0), 8)[0].shape == (8, 4)


@pytest.mark.parametrize(
    "completion, target, expected",
    [
        ("4607$", 17, 1.0),  # correct
        ("4608$", 17, 0.9),  # off by one
        ("9999$", 20, 0.0),  # off by 16: clipped at 0
        ("0000$", 3, 0.7),
        ("999$_", 27, 0.5),  # three digits: malformed, half credit
        ("46070$", 17, 0.5),  # five digits
        ("4607_", 17, 0.5),  # no EOS
        ("46$07$", 17, 0.15),  # body "46" sums to 10: closeness 0.3, halved
        ("$4607", 17, 0.0),  # empty body
        ("4+07$", 11, 0.5),  # non-digit inside the body: malformed
    ],
)
def test_digit_sum_reward_hand_computed(completion, target, expected):
    reward = DigitSumTask().reward_fn(_encode([completion]), jnp.asarray([target]))
    np.testing.assert_allclose(reward, [expected], atol=1e-6)
    assert reference_digit_sum(completion, target) == pytest.approx(expected)


def test_digit_sum_reward_matches_python_reference():
    task = DigitSumTask()
    rng = np.random.default_rng(1)
    n, width = 400, 8
    targets = rng.integers(0, 37, size=n)
    answers = ["".join(map(str, row)) for row in np.asarray(task.correct_answers(jax.random.key(2), targets))]
    rows = _random_completions(rng, n, width, answers)
    reward = jax.jit(task.reward_fn)(_encode(rows), jnp.asarray(targets))
    expected = [reference_digit_sum(r, int(t)) for r, t in zip(rows, targets, strict=True)]
    assert reward.shape == (n,) and reward.dtype == jnp.float32
    np.testing.assert_allclose(reward, expected, atol=1e-6)
    # The mix covers all three regimes: full, partial and zero reward.
    assert (reward == 1).any() and ((reward > 0) & (reward < 1)).any() and (reward == 0).any()


def test_correct_answers_sum_to_target():
    task = DigitSumTask()
    targets = jnp.arange(37)
    answers = np.asarray(task.correct_answers(jax.random.key(0), targets))
    assert answers.min() >= 0 and answers.max() <= 9
    np.testing.assert_array_equal(answers.sum(1), np.arange(37))


# -------------------------------------------------------------- SortDigits


def test_sort_prompts_and_targets():
    task = SortDigitsTask(num_digits=5)
    prompts, targets = task.sample_prompts(jax.random.key(0), 32)
    assert prompts.shape == (32, 7) and targets.shape == (32, 5)
    for text, target in zip(TOK.decode_batch(prompts), np.asarray(targets), strict=True):
        assert text[0] == "^" and text[-1] == "|"
        assert sorted(int(c) for c in text[1:-1]) == target.tolist()


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("01234$", 1.0),
        ("01239$", 0.8),
        ("43210$", 0.2),  # only the middle digit is in place
        ("0123$_", 0.5 * 0.8),  # too short: malformed
        ("012344$", 0.5 * 1.0),  # too long: the first five are right, halved
        ("0123", 0.5 * 0.8),  # completion narrower than k, no EOS
        ("01234_", 0.5 * 1.0),  # no EOS
        ("$01234", 0.0),
    ],
)
def test_sort_reward_hand_computed(completion, expected):
    target = jnp.asarray([[0, 1, 2, 3, 4]])
    reward = SortDigitsTask().reward_fn(_encode([completion]), target)
    np.testing.assert_allclose(reward, [expected], atol=1e-6)
    assert reference_sort(completion, [0, 1, 2, 3, 4]) == pytest.approx(expected)


def test_sort_reward_matches_python_reference():
    task = SortDigitsTask(num_digits=4)
    rng = np.random.default_rng(3)
    n, width = 400, 7
    _, targets = task.sample_prompts(jax.random.key(4), n)
    answers = ["".join(map(str, row)) for row in np.asarray(targets)]
    rows = _random_completions(rng, n, width, answers)
    reward = jax.jit(task.reward_fn)(_encode(rows), targets)
    expected = [reference_sort(r, t.tolist()) for r, t in zip(rows, np.asarray(targets), strict=True)]
    assert reward.shape == (n,) and reward.dtype == jnp.float32
    np.testing.assert_allclose(reward, expected, atol=1e-6)
    assert (reward == 1).any() and ((reward > 0) & (reward < 1)).any() and (reward == 0).any()


# ----------------------------------------------------- reward conventions


def test_reward_is_composed_from_protocol_parts():
    task = DigitSumTask()
    assert isinstance(task.reward_fn, CompositeReward)
    rows, targets = _encode(["4607$", "999$_", "12"]), jnp.asarray([17, 27, 3])
    strict = DigitSumCloseness(strict=True)(rows, targets)
    lenient = DigitSumCloseness(strict=False)(rows, targets)
    np.testing.assert_allclose(strict, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(lenient, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(WellFormedReward(num_digits=4)(rows, targets), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(task.reward_fn(rows, targets), 0.5 * strict + 0.5 * lenient)
    np.testing.assert_allclose(SortedPositionAccuracy()(_encode(["012$"]), jnp.asarray([[0, 1, 2]])), [1.0])


def test_full_tokens_with_prompt_length_and_completion_mask():
    task = DigitSumTask()
    prompts = task.encode_prompts(jnp.asarray([17, 5]))
    completion = _encode(["4607$_", "0500$1"])
    full = jnp.concatenate([prompts, completion], axis=1)
    expected = task.reward_fn(completion, jnp.asarray([17, 5]))
    np.testing.assert_allclose(task.reward_fn(full, jnp.asarray([17, 5]), prompt_length=4), expected)
    # Masking the tokens after the EOS changes nothing; masking the EOS itself
    # makes the completion malformed (no EOS).
    mask = jnp.asarray([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    np.testing.assert_allclose(
        task.reward_fn(completion, jnp.asarray([17, 5]), completion_mask=mask), [1.0, 0.5]
    )
    full_mask = jnp.concatenate([jnp.zeros((2, 4), jnp.int32), mask], axis=1)
    np.testing.assert_allclose(
        task.reward_fn(full, jnp.asarray([17, 5]), prompt_length=4, completion_mask=full_mask), [1.0, 0.5]
    )


def test_reward_errors_name_the_problem():
    task = DigitSumTask()
    with pytest.raises(ValueError, match="needs conditions"):
        task.reward_fn(_encode(["4607$"]))
    with pytest.raises(ValueError, match=r"completion tokens \(B, N\), got shape \(5,\)"):
        task.reward_fn(jnp.zeros((5,), jnp.int32), jnp.zeros((5,)))
    with pytest.raises(ValueError, match=r"one row per sample \(2\), got shape \(3,\)"):
        task.reward_fn(_encode(["1$", "2$"]), jnp.zeros((3,)))
    with pytest.raises(ValueError, match="max_target must be in"):
        DigitSumTask(num_digits=2, max_target=30)
    with pytest.raises(ValueError, match="noise must be a fraction"):
        task.demonstrations(0, 4, noise=1.5)


# ---------------------------------------------------------- demonstrations


@pytest.mark.parametrize("task", [DigitSumTask(), SortDigitsTask()], ids=["digit_sum", "sort"])
def test_demonstrations(task):
    # Compiled: dozens of eager jnp ops each compile once on first use, which is slow on CPU.
    reward_fn = jax.jit(task.reward_fn, static_argnames="prompt_length")
    well_formed = jax.jit(WellFormedReward(num_digits=task.answer_length - 1))
    clean = task.demonstrations(jax.random.key(0), 256, noise=0.0)
    p, a = task.prompt_length, task.answer_length
    assert clean.tokens.shape == (256, p + a) and clean.loss_mask.shape == (256, p + a)
    np.testing.assert_array_equal(clean.loss_mask[:, :p], 0)
    np.testing.assert_array_equal(clean.loss_mask[:, p:], 1)
    np.testing.assert_array_equal(clean.tokens[:, :p], clean.prompts)
    np.testing.assert_array_equal(clean.tokens[:, -1], TOK.eos_id)
    assert not clean.is_noise.any()
    np.testing.assert_allclose(reward_fn(clean.tokens[:, p:], clean.conditions), 1.0)

    noisy = task.demonstrations(jax.random.key(0), 2000, noise=0.6)
    assert abs(float(noisy.is_noise.mean()) - 0.6) < 0.05
    reward = np.asarray(reward_fn(noisy.tokens, noisy.conditions, prompt_length=p))
    np.testing.assert_allclose(reward[~np.asarray(noisy.is_noise)], 1.0)
    # Noise rows are well-formed random answers: rewarded, but well below 1 on average.
    noise_reward = reward[np.asarray(noisy.is_noise)].mean()
    assert 0.05 < noise_reward < 0.6
    np.testing.assert_allclose(well_formed(noisy.tokens[:, p:], noisy.conditions), 1.0)
