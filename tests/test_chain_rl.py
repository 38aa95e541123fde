"""GRPO on a denoising sampler's chain (issue 12): the chain policy's maths and the online step.

Independent references are numpy: the DDIM step of Song et al. (2021, eq. 12),
the flow SDE step of Flow-GRPO, the Gaussian log-density, and a Monte-Carlo KL.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl import GRPOConfig, GRPOTrainer
from artifex_rl.distributions.chain import gaussian_step_kl, gaussian_step_log_prob
from artifex_rl.generative import DenoisingChainPolicy, DiffusionTrainer, InkReward
from artifex_rl.generative.diffusion import DiffusionConfig
from artifex_rl.generative.image_rewards import SmoothnessReward
from artifex_rl.generative.schedules import make_schedule, sampling_timesteps
from artifex_rl.models.unet import DenoiserUNet

SCHEDULE = make_schedule("cosine", 100)


def _model(seed: int = 0, num_classes: int | None = None) -> DenoiserUNet:
    """A tiny U-Net whose (zero-initialised) output layer is perturbed, so predictions are not 0."""
    model = DenoiserUNet(channels=(8, 16), emb_dim=16, num_classes=num_classes, rngs=nnx.Rngs(seed))
    key = jax.random.key(seed + 100)
    model.out.kernel[...] = 0.2 * jax.random.normal(key, model.out.kernel[...].shape)
    return model


def _numpy_ddim_mean_std(x, pred, ab, ab_next, eta):
    x0 = np.clip((x - np.sqrt(1 - ab) * pred) / np.sqrt(ab), -1, 1)
    eps = (x - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
    sigma = eta * np.sqrt((1 - ab_next) / (1 - ab)) * np.sqrt(1 - ab / ab_next)
    return np.sqrt(ab_next) * x0 + np.sqrt(1 - ab_next - sigma**2) * eps, sigma


def _numpy_flow_mean_std(x, v, t, t_next, a, t_cap):
    sigma = a * np.sqrt(t / (1 - min(t, t_cap)))
    dt = t_next - t
    return x + (v + sigma**2 / (2 * t) * (x + (1 - t) * v)) * dt, sigma * np.sqrt(-dt)


def _numpy_log_density_sum(x, mean, std):
    return np.sum(-0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi))


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_chain_log_probs_equal_a_numpy_gaussian_density_of_the_stored_steps(kind):
    model = _model(1)
    if kind == "diffusion":
        policy = DenoisingChainPolicy.diffusion(SCHEDULE, num_steps=4, eta=0.8)
    else:
        policy = DenoisingChainPolicy.flow(num_steps=4, noise_level=0.6)
    conditions = jnp.zeros((3,), jnp.int32)
    trajectory = policy.rollout(model, conditions, jax.random.key(0))
    states = np.asarray(trajectory.states, np.float64)
    assert states.shape == (3, 5, 8, 8, 1)
    np.testing.assert_array_equal(np.asarray(trajectory.samples), np.asarray(trajectory.states[:, -1]))
    steps = jnp.broadcast_to(jnp.asarray(policy.stochastic_steps), (3, policy.stochastic_steps.size))
    scores = policy.score(model, conditions, trajectory.states, steps)

    ks = sampling_timesteps(100, 4)
    ab_all = np.asarray(SCHEDULE.alpha_bars, np.float64)
    ts = np.linspace(1.0, 0.0, 5)
    for row in range(3):
        for col, i in enumerate(np.asarray(policy.stochastic_steps)):
            x = states[row, i]
            if kind == "diffusion":
                t = np.full((1,), ks[i] / 100, np.float32)
                pred = np.asarray(model(jnp.asarray(x[None], jnp.float32), t), np.float64)[0]
                ab_next = ab_all[ks[i + 1]] if i + 1 < 4 else 1.0
                mean, std = _numpy_ddim_mean_std(x, pred, ab_all[ks[i]], ab_next, 0.8)
            else:
                v = np.asarray(model(jnp.asarray(x[None], jnp.float32), jnp.full((1,), ts[i], jnp.float32)), np.float64)[0]
                mean, std = _numpy_flow_mean_std(x, v, ts[i], ts[i + 1], 0.6, ts[1])
            expected_sum = _numpy_log_density_sum(states[row, i + 1], mean, std)
            np.testing.assert_allclose(float(scores.log_probs[row, col]) * 64, expected_sum, rtol=2e-4, atol=2e-3)
            np.testing.assert_allclose(np.asarray(scores.means[row, col]), mean, rtol=1e-3, atol=1e-4)
            np.testing.assert_allclose(float(scores.stds[row, col]), std, rtol=1e-4)


def test_the_deterministic_last_ddim_step_is_not_an_action():
    policy = DenoisingChainPolicy.diffusion(SCHEDULE, num_steps=5, eta=1.0)
    assert policy.step_stds[-1] == 0.0
    np.testing.assert_array_equal(policy.stochastic_steps, np.arange(4))
    flow = DenoisingChainPolicy.flow(num_steps=5)
    np.testing.assert_array_equal(flow.stochastic_steps, np.arange(5))


def test_log_prob_mean_is_the_sum_over_pixels_divided_by_the_pixels():
    rng = np.random.default_rng(0)
    x, mean = rng.normal(size=(2, 3, 8, 8, 1)), rng.normal(size=(2, 3, 8, 8, 1))
    std = rng.uniform(0.1, 1.0, size=(2, 3))
    total = gaussian_step_log_prob(jnp.asarray(x), jnp.asarray(mean), jnp.asarray(std), reduce="sum")
    mean_lp = gaussian_step_log_prob(jnp.asarray(x), jnp.asarray(mean), jnp.asarray(std))
    np.testing.assert_allclose(np.asarray(mean_lp) * 64, np.asarray(total), rtol=1e-5)
    expected = [[_numpy_log_density_sum(x[i, j], mean[i, j], std[i, j]) for j in range(3)] for i in range(2)]
    np.testing.assert_allclose(np.asarray(total), expected, rtol=1e-5)


def test_closed_form_kl_equals_a_monte_carlo_estimate():
    rng = np.random.default_rng(1)
    mean, ref = rng.normal(size=(1, 1, 4, 4, 1)), rng.normal(size=(1, 1, 4, 4, 1))
    std = np.array([[0.7]])
    closed = float(gaussian_step_kl(jnp.asarray(mean), jnp.asarray(ref), jnp.asarray(std))[0, 0])
    samples = mean + std[0, 0] * rng.standard_normal((200_000, 1, 1, 4, 4, 1))
    log_p = -0.5 * ((samples - mean) / 0.7) ** 2
    log_q = -0.5 * ((samples - ref) / 0.7) ** 2
    monte_carlo = float(np.mean(log_p - log_q))  # per pixel: the normalisers cancel
    assert closed == pytest.approx(monte_carlo, rel=0.02)
    assert closed == pytest.approx(float(np.mean((mean - ref) ** 2) / (2 * 0.49)), rel=1e-5)


def _trainer(policy, reward, *, beta=0.01, num_iterations=1, lr=1e-3, seed=0, num_classes=None):
    config = GRPOConfig(num_generations=4, beta=beta, num_iterations=num_iterations, seed=seed, entropy_coeff=0.0)
    return GRPOTrainer(_model(seed, num_classes), optax.adam(lr), config, policy=policy, reward_fn=reward)


def test_the_first_ratio_is_exactly_one_and_the_first_kl_is_zero():
    policy = DenoisingChainPolicy.diffusion(SCHEDULE, num_steps=4)
    trainer = _trainer(policy, InkReward())
    metrics = trainer.train_step({"observations": np.zeros((2,), np.int32)})
    assert float(metrics["approx_kl"]) == 0.0
    assert float(metrics["clip_fraction"]) == 0.0
    # The reference is the policy before the first update: equal up to float round-off
    # (the reference is scored in a forward-only program, the policy inside the gradient's).
    assert abs(float(metrics["kl"])) < 1e-10


def test_with_several_iterations_the_stored_old_log_probs_match_the_current_policy():
    policy = DenoisingChainPolicy.flow(num_steps=4)
    trainer = _trainer(policy, InkReward(), num_iterations=2, lr=0.0)
    metrics = trainer.train_step({"observations": np.zeros((2,), np.int32)})
    assert abs(float(metrics["approx_kl"])) < 1e-7
    assert float(metrics["clip_fraction"]) == 0.0


def test_the_sampler_inside_the_compiled_step_draws_what_the_standalone_sampler_draws():
    model = _model(3)
    diffusion = DiffusionTrainer(model, optax.adam(1e-3), DiffusionConfig(num_timesteps=100, seed=0))
    policy = DenoisingChainPolicy.diffusion(diffusion.schedule, num_steps=4, eta=1.0)
    trainer = GRPOTrainer(_model(3), optax.adam(1e-3), GRPOConfig(num_generations=4, seed=0), policy=policy,
                          reward_fn=InkReward())
    key = jax.random.key(7)
    trainer.train_step({"observations": np.zeros((2,), np.int32)}, key=key)
    labels = jnp.zeros((8,), jnp.int32)
    standalone = jax.jit(diffusion.sampler(num_steps=4, method="ddim", eta=1.0))(
        diffusion.train_state["params"]["model"], diffusion.train_state["model_state"]["model"],
        jax.random.fold_in(key, 0), labels,
    )
    np.testing.assert_array_equal(np.asarray(trainer.last_outputs["samples"]), np.asarray(standalone))
    np.testing.assert_allclose(
        np.asarray(trainer.last_outputs["rewards"]), np.asarray(InkReward()(standalone)), rtol=1e-6
    )


def test_train_fraction_picks_distinct_sorted_stochastic_steps_per_chain():
    policy = DenoisingChainPolicy.diffusion(SCHEDULE, num_steps=9, train_fraction=0.5)
    steps = np.asarray(policy.training_steps(jax.random.key(0), 16))
    assert steps.shape == (16, 4)
    assert np.all(np.diff(steps, axis=1) > 0)
    assert set(steps.ravel()) <= set(policy.stochastic_steps.tolist())
    assert len({tuple(r) for r in steps}) > 1  # random per chain


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: DenoisingChainPolicy.diffusion(SCHEDULE, eta=0.0), "eta"),
        (lambda: DenoisingChainPolicy.flow(noise_level=0.0), "noise_level"),
        (lambda: DenoisingChainPolicy.diffusion(SCHEDULE, train_fraction=0.0), "train_fraction"),
        (lambda: DenoisingChainPolicy("flow", 1), "num_steps"),
        (lambda: DenoisingChainPolicy("diffusion", 4), "schedule"),
        (lambda: DenoisingChainPolicy("gan", 4), "kind"),
    ],
)
def test_impossible_chain_policies_are_refused_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_reward_that_needs_concrete_values_is_refused_with_a_clear_error():
    def host_reward(samples, conditions=None):
        return np.asarray(samples).mean(axis=(1, 2, 3))

    trainer = _trainer(DenoisingChainPolicy.diffusion(SCHEDULE, num_steps=3), host_reward)
    with pytest.raises(TypeError, match="jax.numpy"):
        trainer.train_step({"observations": np.zeros((2,), np.int32)})


def test_image_rewards_against_numpy():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(5, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(InkReward()(images)), ((images + 1) / 2).mean(axis=(1, 2, 3)), rtol=1e-6)
    tv = (np.abs(np.diff(images, axis=1)).mean(axis=(1, 2, 3)) + np.abs(np.diff(images, axis=2)).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(np.asarray(SmoothnessReward()(images)), -tv / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="samples must be images"):
        InkReward()(images[..., 0])


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_grpo_on_the_chain_raises_the_reward(kind):
    """Learning test: a label-free reward (ink) rises within 40 GRPO steps of a tiny U-Net."""
    if kind == "diffusion":
        policy = DenoisingChainPolicy.diffusion(SCHEDULE, num_steps=4)
    else:
        policy = DenoisingChainPolicy.flow(num_steps=4)
    trainer = _trainer(policy, InkReward(), beta=0.0, lr=1e-2)
    batch = {"observations": np.zeros((4,), np.int32)}
    rewards = [float(trainer.train_step(batch)["mean_reward"]) for _ in range(40)]
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert last > first + 0.15, (first, last)
    assert math.isfinite(last)


def test_reinforce_on_the_chain_raises_the_reward():
    """REINFORCE (DDPO's score-function estimator) on the same chains: the ink reward rises."""
    from artifex_rl import REINFORCEConfig, REINFORCETrainer

    policy = DenoisingChainPolicy.flow(num_steps=4)
    trainer = REINFORCETrainer(_model(0), optax.adam(1e-2), REINFORCEConfig(entropy_coeff=0.0, seed=0),
                               policy=policy, reward_fn=InkReward())
    batch = {"observations": np.zeros((16,), np.int32)}
    rewards = [float(trainer.train_step(batch)["mean_reward"]) for _ in range(40)]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.15, rewards
    with pytest.raises(ValueError, match="reward_fn"):
        REINFORCETrainer(_model(0), optax.adam(1e-2), policy=policy).train_step(batch)


def test_diffusion_dpo_loss_against_numpy():
    """Wallace et al. (2023): L = -log sigmoid(-beta/2 ((e_w - e_l)_theta - (e_w - e_l)_ref)), shared t and noise."""
    from artifex_rl import DPOConfig, DPOTrainer
    from artifex_rl.generative import DenoisingLikelihood

    policy_model, reference = _model(4, num_classes=10), _model(5, num_classes=10)
    likelihood = DenoisingLikelihood(SCHEDULE)
    beta = 500.0
    trainer = DPOTrainer(policy_model, optax.sgd(0.0), DPOConfig(beta=beta, seed=0), policy=likelihood,
                         reference_model=reference)
    rng = np.random.default_rng(0)
    b = 6
    batch = {
        "observations": rng.integers(0, 10, size=b).astype(np.int32),
        "chosen": rng.uniform(-1, 1, size=(b, 8, 8, 1)).astype(np.float32),
        "rejected": rng.uniform(-1, 1, size=(b, 8, 8, 1)).astype(np.float32),
        "timesteps": rng.integers(0, 100, size=b).astype(np.int32),
        "noise": rng.standard_normal((b, 8, 8, 1)).astype(np.float32),
    }
    metrics = trainer.train_step(batch)

    ab = np.asarray(SCHEDULE.alpha_bars, np.float64)[batch["timesteps"]][:, None, None, None]
    t = jnp.asarray(batch["timesteps"] / 100.0, jnp.float32)

    def errors(model, images):
        x_t = np.sqrt(ab) * images + np.sqrt(1 - ab) * batch["noise"]
        pred = np.asarray(model(jnp.asarray(x_t, jnp.float32), t, jnp.asarray(batch["observations"])), np.float64)
        return np.mean((pred - batch["noise"]) ** 2, axis=(1, 2, 3))

    diff_theta = errors(policy_model, batch["chosen"]) - errors(policy_model, batch["rejected"])
    diff_ref = errors(reference, batch["chosen"]) - errors(reference, batch["rejected"])
    z = -beta / 2 * (diff_theta - diff_ref)
    expected = np.mean(np.log1p(np.exp(-z)))  # -log sigmoid(z)
    assert float(metrics["dpo_loss"]) == pytest.approx(expected, rel=1e-3, abs=1e-5)
    assert float(metrics["dpo_loss"]) != pytest.approx(math.log(2.0), abs=1e-3)  # the models differ: not the trivial value


def test_per_condition_advantages_against_numpy():
    from artifex_rl.rl.trajectories import per_condition_advantages

    rng = np.random.default_rng(2)
    rewards = rng.normal(size=24).astype(np.float32)
    rewards[5] = np.nan
    conditions = rng.integers(0, 3, size=24)
    got, _ = per_condition_advantages(jnp.asarray(rewards), jnp.asarray(conditions))
    expected = np.zeros(24)
    for c in range(3):
        idx = np.flatnonzero((conditions == c) & np.isfinite(rewards))
        expected[idx] = (rewards[idx] - rewards[idx].mean()) / (rewards[idx].std() + 1e-4)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-5)


def test_ppo_on_the_chain_raises_the_reward():
    """PPO (DDPO's importance-sampling variant: per-condition advantages, no critic, 2 epochs x 2 minibatches)."""
    from artifex_rl import PPOConfig, PPOTrainer

    policy = DenoisingChainPolicy.flow(num_steps=4)
    config = PPOConfig(entropy_coeff=0.0, update_epochs=2, num_minibatches=2, seed=0)
    trainer = PPOTrainer(_model(0), optax.adam(1e-2), config, policy=policy, reward_fn=InkReward())
    batch = {"observations": np.zeros((16,), np.int32)}
    first = trainer.train_step(batch)
    assert float(first["approx_kl"]) >= 0.0 and "value_loss" not in first
    rewards = [float(first["mean_reward"])] + [float(trainer.train_step(batch)["mean_reward"]) for _ in range(29)]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.15, rewards
