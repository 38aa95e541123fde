"""Degenerate RL settings are errors that name the field and the value; SimPO's small beta warns."""

from __future__ import annotations

import warnings

import pytest

from artifex_rl.rl.configs import DPOConfig, GRPOConfig, PPOConfig


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "robust"])
@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_dpo_beta_must_be_positive(loss_type, beta):
    with pytest.raises(
        ValueError, match=rf"beta must be > 0, got {beta}: the '{loss_type}' loss then has zero gradient"
    ):
        DPOConfig(beta=beta, loss_type=loss_type)


def test_ipo_beta_zero_names_the_division():
    with pytest.raises(ValueError, match=r"beta must be > 0, got 0.0: IPO's target margin 1 / \(2 beta\)"):
        DPOConfig(beta=0.0, loss_type="ipo")


def test_simpo_beta_zero_is_an_error_and_small_beta_warns():
    with pytest.raises(ValueError, match=r"beta must be > 0, got 0.0: the SimPO loss"):
        DPOConfig(beta=0.0, reference_free=True)
    with pytest.warns(UserWarning, match=r"reference_free=True, beta=0.5.*beta in 2-10"):
        DPOConfig(beta=0.5, reference_free=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DPOConfig(beta=2.0, reference_free=True)
        DPOConfig(beta=0.1)  # plain DPO: 0.1 is the paper's value


@pytest.mark.parametrize("config_class", [PPOConfig, GRPOConfig])
@pytest.mark.parametrize("clip", [0.0, -0.2])
def test_clip_param_must_be_positive(config_class, clip):
    with pytest.raises(ValueError, match=rf"clip_param must be > 0, got {clip}: the clipped ratio"):
        config_class(clip_param=clip)


def test_grpo_epsilon_high_must_be_positive():
    with pytest.raises(ValueError, match=r"epsilon_high must be > 0, got 0.0"):
        GRPOConfig(epsilon_high=0.0)


@pytest.mark.parametrize("group", [1, 0])
def test_grpo_needs_two_generations(group):
    with pytest.raises(ValueError, match=rf"num_generations must be >= 2, got {group}: a group of one"):
        GRPOConfig(num_generations=group)


def test_sane_settings_are_accepted():
    GRPOConfig(num_generations=2, beta=0.0, loss_type="dapo")  # beta=0 is GRPO without KL (Dr. GRPO, DAPO)
    PPOConfig(clip_param=0.1)
    DPOConfig(beta=0.5, loss_type="ipo")
