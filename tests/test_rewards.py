"""Tests of artifex_rl.rl.rewards: each wrapper against a plain numpy computation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artifex_rl.rl import rewards as R


def sum_reward(samples, conditions=None, **kwargs):
    """A reward that depends on the samples: the sum over the feature axis."""
    return jnp.sum(samples, axis=-1)


def square_reward(samples, conditions=None, **kwargs):
    return jnp.sum(samples**2, axis=-1)


@pytest.fixture
def samples():
    return np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)


def test_reward_function_protocol(samples):
    assert isinstance(sum_reward, R.RewardFunction)
    assert isinstance(R.ConstantReward(1.0), R.RewardFunction)
    assert not isinstance(3.0, R.RewardFunction)


def test_constant_reward_reads_batch_size_from_array_and_pytree(samples):
    got = R.ConstantReward(0.25)(samples)
    assert got.shape == (6,)
    np.testing.assert_array_equal(np.asarray(got), np.full(6, 0.25, np.float32))
    tree = {"tokens": jnp.zeros((4, 7), jnp.int32), "mask": jnp.ones((4, 7))}
    assert R.ConstantReward(-1.0)(tree).shape == (4,)
    assert R.ConstantReward(2.0)((jnp.zeros((5, 2)), jnp.zeros((5,)))).shape == (5,)
    with pytest.raises(ValueError, match="cannot read the batch size"):
        R.ConstantReward(1.0)(jnp.zeros(()))


def test_composite_reward_is_weighted_sum(samples):
    reward = R.CompositeReward([sum_reward, square_reward, R.ConstantReward(1.0)], weights=[0.3, 0.7, -2.0])
    expected = np.zeros(6)
    for i, row in enumerate(samples.astype(np.float64)):
        expected[i] = 0.3 * sum(row) + 0.7 * sum(v * v for v in row) - 2.0
    np.testing.assert_allclose(np.asarray(reward(samples)), expected, rtol=1e-5, atol=1e-5)
    unweighted = R.CompositeReward([sum_reward, square_reward])
    np.testing.assert_allclose(
        np.asarray(unweighted(samples)), samples.sum(-1) + (samples**2).sum(-1), rtol=1e-5, atol=1e-5
    )
    # Lists are frozen into tuples: the dataclass stays hashable and unaffected by later edits.
    fns = [sum_reward]
    frozen = R.CompositeReward(fns, [1.0])
    fns.append(square_reward)
    assert frozen.reward_fns == (sum_reward,)
    hash(frozen)


def test_composite_reward_errors(samples):
    with pytest.raises(ValueError, match="got 2 reward_fns but 3 weights"):
        R.CompositeReward([sum_reward, square_reward], weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least one"):
        R.CompositeReward([])

    def bad_shape(samples, conditions=None, **kwargs):
        return jnp.zeros((samples.shape[0], 1))

    with pytest.raises(ValueError, match=r"bad_shape.*returned shape \(6, 1\), expected \(6,\)"):
        R.CompositeReward([sum_reward, bad_shape])(samples)


@pytest.mark.parametrize("threshold", [-0.5, 0.0, 0.7])
def test_threshold_reward(samples, threshold):
    reward = R.ThresholdReward(sum_reward, threshold, above_value=2.0, below_value=-1.0)
    base = samples.astype(np.float64).sum(-1)
    expected = [2.0 if b > threshold else -1.0 for b in base]
    np.testing.assert_array_equal(np.asarray(reward(samples)), expected)


def test_threshold_reward_is_strictly_above():
    reward = R.ThresholdReward(lambda s, c=None: s, threshold=0.5)
    np.testing.assert_array_equal(np.asarray(reward(jnp.array([0.5, 0.50001, 0.4]))), [0.0, 1.0, 0.0])


def test_scaled_and_clipped_reward(samples):
    base = samples.astype(np.float64).sum(-1)
    np.testing.assert_allclose(
        np.asarray(R.ScaledReward(sum_reward, 3.0, offset=-1.5)(samples)),
        3.0 * base - 1.5,
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(np.asarray(R.ScaledReward(sum_reward, 0.5)(samples)), 0.5 * base, rtol=1e-5)
    clipped = np.asarray(R.ClippedReward(sum_reward, -0.5, 0.5)(samples))
    np.testing.assert_allclose(clipped, [min(max(b, -0.5), 0.5) for b in base], rtol=1e-5, atol=1e-6)
    assert np.any(np.abs(base) > 0.5)  # the clip is exercised
    with pytest.raises(ValueError, match="min_value <= max_value"):
        R.ClippedReward(sum_reward, 1.0, 0.0)


def test_rewards_compose_and_pass_conditions_and_kwargs(samples):
    seen = {}

    def conditional(samples, conditions=None, **kwargs):
        seen["conditions"], seen["kwargs"] = conditions, kwargs
        return jnp.sum(samples, -1) * conditions

    reward = R.ClippedReward(R.ScaledReward(R.CompositeReward([conditional], [2.0]), 0.5, 1.0), 0.0, 2.0)
    cond = np.arange(6, dtype=np.float32)
    got = reward(samples, cond, temperature=0.3)
    expected = np.clip(0.5 * (2.0 * samples.astype(np.float64).sum(-1) * cond) + 1.0, 0.0, 2.0)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
    assert seen["kwargs"] == {"temperature": 0.3}
    assert seen["conditions"] is cond


def test_rewards_are_frozen_dataclasses():
    for reward in [
        R.ConstantReward(1.0),
        R.CompositeReward([sum_reward]),
        R.ThresholdReward(sum_reward, 0.0),
        R.ScaledReward(sum_reward, 2.0),
        R.ClippedReward(sum_reward, 0.0, 1.0),
    ]:
        assert dataclasses.is_dataclass(reward)
        with pytest.raises(dataclasses.FrozenInstanceError):
            reward.__setattr__(dataclasses.fields(reward)[0].name, None)


def test_rewards_are_jittable(samples):
    reward = R.ClippedReward(
        R.CompositeReward(
            [R.ThresholdReward(sum_reward, 0.0), R.ScaledReward(square_reward, 0.1)], [1.0, 1.0]
        ),
        0.0,
        1.5,
    )
    np.testing.assert_allclose(np.asarray(jax.jit(reward)(samples)), np.asarray(reward(samples)), rtol=1e-6)
    # Under jit only the static shape is checked; the NaN check needs concrete values.
    checked = jax.jit(lambda s: R.validate_rewards(jnp.sum(s, -1) * jnp.nan, R.batch_size_of(s)))(samples)
    assert checked.shape == (6,)
    with pytest.raises(ValueError, match=r"returned shape \(6, 3\), expected \(6,\)"):
        jax.jit(lambda s: R.validate_rewards(s, R.batch_size_of(s)))(samples)


def test_validate_rewards_shape_and_nan(samples):
    out = R.validate_rewards(np.array([1, 0, 1]), 3, sum_reward)
    assert out.dtype == jnp.float32 and out.shape == (3,)
    with pytest.raises(
        ValueError, match=r"reward function <function sum_reward.*returned shape \(3, 1\), expected \(3,\)"
    ):
        R.validate_rewards(jnp.zeros((3, 1)), 3, sum_reward)
    with pytest.raises(ValueError, match=r"ScaledReward\(reward_fn=.*returned shape \(\), expected \(4,\)"):
        R.validate_rewards(jnp.float32(1.0), 4, R.ScaledReward(sum_reward, 2.0))
    with pytest.raises(ValueError, match=r"non-finite rewards \(NaN or inf\) at batch positions \[1, 3\]"):
        R.validate_rewards(jnp.array([0.0, jnp.nan, 1.0, jnp.inf]), 4, sum_reward)
    with pytest.raises(ValueError, match=r"^reward returned shape"):
        R.validate_rewards(jnp.zeros(2), 4)


def test_validate_rewards_names_the_failing_function(samples):
    checked = R.validate_rewards(sum_reward(samples), R.batch_size_of(samples), sum_reward)
    np.testing.assert_allclose(np.asarray(checked), samples.sum(-1), rtol=1e-6)
    nan_reward = R.ScaledReward(lambda s, c=None: jnp.log(jnp.sum(s, -1)), 1.0)
    with pytest.raises(ValueError, match=r"ScaledReward.*non-finite rewards"):
        R.validate_rewards(nan_reward(samples), R.batch_size_of(samples), nan_reward)
    assert R.batch_size_of({"a": jnp.zeros((3, 2))}) == 3
