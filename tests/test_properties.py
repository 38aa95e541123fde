"""Property-based tests (hypothesis) of the RL maths in ``artifex_rl.rl.losses``.

Finite inputs over wide ranges give finite outputs (rewards up to 1e6, log-probs
down to -1e3, masks with empty rows, any group size); GRPO advantages are
invariant to adding a constant to a group's rewards and, for
``scale_rewards="group"``, to scaling them by a positive factor. Shapes are
drawn from a few sizes so eager JAX reuses its compiled ops.
"""

from __future__ import annotations

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from artifex_rl.rl import losses

# jitted once per shape and static argument: eager op-by-op dispatch would compile every op per shape
compute_group_advantages = jax.jit(losses.compute_group_advantages, static_argnums=(1, 2))
clipped_surrogate_per_element = jax.jit(losses.clipped_surrogate_per_element)
aggregate_token_loss = jax.jit(losses.aggregate_token_loss, static_argnums=(2,))
compute_kl_divergence = jax.jit(losses.compute_kl_divergence, static_argnums=(2,))
compute_dpo_loss = jax.jit(losses.compute_dpo_loss, static_argnames=("loss_type", "reference_free"))
compute_gae_advantages = jax.jit(losses.compute_gae_advantages)
normalize_advantages = jax.jit(losses.normalize_advantages)

SETTINGS = settings(max_examples=50, deadline=None)
T = 16


def floats(lo, hi):
    return st.floats(float(np.float32(lo)), float(np.float32(hi)), allow_nan=False, allow_infinity=False, width=32)


def arrays(shape, lo, hi):
    return hnp.arrays(np.float32, shape, elements=floats(lo, hi))


@st.composite
def grouped_rewards(draw, lo=-1e6, hi=1e6, integer=False):
    """``(rewards (16,), G)``: groups of size 2, 4 or 8."""
    g = draw(st.sampled_from([2, 4, 8]))
    n = 16 // g  # one batch size: each compiled program is reused
    if integer:
        values = draw(hnp.arrays(np.int32, n * g, elements=st.integers(-50, 50))).astype(np.float32)
    else:
        values = draw(arrays(n * g, lo, hi))
    return values, g


@SETTINGS
@given(grouped_rewards(), st.sampled_from(["group", "batch", "none"]))
def test_group_advantages_are_finite_and_zero_mean_per_group(data, scale):
    rewards, g = data
    advantages, metrics = compute_group_advantages(rewards, g, scale)
    advantages = np.asarray(advantages, np.float64)
    assert np.isfinite(advantages).all()
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())
    spread = np.abs(rewards).max() + 1.0
    np.testing.assert_allclose(advantages.reshape(-1, g).mean(1), 0.0, atol=1e-5 * spread)


@SETTINGS
@given(grouped_rewards(integer=True), st.integers(-100, 100), st.sampled_from(["group", "batch", "none"]))
def test_adding_a_constant_to_the_rewards_leaves_the_advantages_unchanged(data, shift, scale):
    rewards, g = data
    base, _ = compute_group_advantages(rewards, g, scale)
    shifted, _ = compute_group_advantages(rewards + np.float32(shift), g, scale)
    np.testing.assert_allclose(np.asarray(shifted), np.asarray(base), atol=1e-3)


@SETTINGS
@given(grouped_rewards(integer=True), floats(0.5, 100.0))
def test_scaling_the_rewards_leaves_group_scaled_advantages_unchanged(data, factor):
    rewards, g = data
    base, _ = compute_group_advantages(rewards, g, "group")
    scaled, _ = compute_group_advantages(rewards * np.float32(factor), g, "group")
    # equal up to eps = 1e-4 added to a within-group std of at least ~0.5 (integer rewards)
    np.testing.assert_allclose(np.asarray(scaled), np.asarray(base), rtol=2e-3, atol=2e-3)


@SETTINGS
@given(grouped_rewards(lo=-1e3, hi=1e3), st.data())
def test_non_finite_rewards_get_advantage_zero_and_the_rest_stay_finite(data, draw):
    rewards, g = data
    bad = draw.draw(hnp.arrays(np.bool_, rewards.shape))
    rewards = np.where(bad, np.nan, rewards).astype(np.float32)
    advantages, metrics = compute_group_advantages(rewards, g, "group")
    advantages = np.asarray(advantages)
    assert np.isfinite(advantages).all()
    assert (advantages[bad] == 0).all()
    np.testing.assert_allclose(float(metrics["nonfinite_reward_frac"]), bad.mean(), atol=1e-6)


@SETTINGS
@given(arrays((4, 6), -1e3, 0.0), arrays((4, 6), -1e3, 0.0), arrays((4,), -1e3, 1e3),
       floats(0.01, 0.5), hnp.arrays(np.bool_, (4, 6)), st.sampled_from(["grpo", "bnpo", "dr_grpo", "dapo"]))
def test_clipped_surrogate_and_token_aggregation_are_finite(logp, old, adv, clip, mask, loss_type):
    per_token = clipped_surrogate_per_element(logp, old, adv, clip)
    assert np.isfinite(np.asarray(per_token)).all()
    loss = aggregate_token_loss(per_token, mask.astype(np.float32), loss_type)
    assert np.isfinite(float(loss))


@SETTINGS
@given(arrays((4, 6), -30.0, 0.0), arrays((4, 6), -30.0, 0.0), st.sampled_from(["k1", "k2", "k3"]),
       hnp.arrays(np.bool_, (4, 6)))
def test_kl_estimates_are_finite(logp, ref, estimator, mask):
    kl = compute_kl_divergence(logp, ref, estimator, mask.astype(np.float32))
    assert np.isfinite(float(kl))


@SETTINGS
@given(arrays((8,), -1e3, 0.0), arrays((8,), -1e3, 0.0), arrays((8,), -1e3, 0.0), arrays((8,), -1e3, 0.0),
       floats(0.01, 10.0), st.sampled_from(["sigmoid", "hinge", "ipo", "robust"]))
def test_dpo_losses_are_finite(pc, pr, rc, rr, beta, loss_type):
    smoothing = 0.1 if loss_type == "robust" else 0.0
    loss, metrics = compute_dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=smoothing)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())


@SETTINGS
@given(arrays((8,), -1e3, 0.0), arrays((8,), -1e3, 0.0), floats(1.0, 10.0), floats(0.0, 2.0),
       hnp.arrays(np.int32, (8,), elements=st.integers(1, 50)))
def test_simpo_loss_is_finite(pc, pr, beta, gamma, lengths):
    loss, _ = compute_dpo_loss(pc, pr, beta=beta, reference_free=True, simpo_gamma=gamma,
                               chosen_lengths=lengths, rejected_lengths=lengths[::-1])
    assert np.isfinite(float(loss))


@SETTINGS
@given(arrays((T,), -1e3, 1e3), arrays((T + 1,), -1e3, 1e3), hnp.arrays(np.bool_, (T,)),
       floats(0.0, 1.0), floats(0.0, 1.0))
def test_gae_is_finite_for_any_discount_and_episode_ends(rewards, values, dones, gamma, lam):
    advantages = compute_gae_advantages(rewards, values, dones.astype(np.float32), gamma, lam)
    assert np.isfinite(np.asarray(advantages)).all()


@SETTINGS
@given(arrays((T,), -1e6, 1e6), hnp.arrays(np.bool_, (T,)))
def test_normalised_advantages_are_finite_even_when_masked_out(x, mask):
    out = np.asarray(normalize_advantages(x, mask.astype(np.float32)))
    assert np.isfinite(out).all()
