"""ActorCritic / MLPPolicy: output shapes, the PPO initialisation, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from artifex_rl.models import ActorCritic, MLPPolicy
from artifex_rl.rl.policies import CategoricalPolicy, GaussianPolicy


def _singular_values(kernel) -> np.ndarray:
    return np.linalg.svd(np.asarray(kernel), compute_uv=False)


@pytest.mark.parametrize("batch", [(), (7,), (3, 5)])
def test_actor_critic_discrete_shapes(batch):
    model = ActorCritic(4, 3, rngs=nnx.Rngs(0))
    logits, value = model(jnp.ones((*batch, 4)))
    assert logits.shape == (*batch, 3)
    assert value.shape == batch
    assert logits.dtype == value.dtype == jnp.float32


@pytest.mark.parametrize("batch", [(), (6,), (2, 3)])
def test_actor_critic_continuous_shapes(batch):
    model = ActorCritic(3, 2, continuous=True, rngs=nnx.Rngs(0))
    (mean, log_std), value = model(jnp.ones((*batch, 3)))
    assert mean.shape == log_std.shape == (*batch, 2)
    assert value.shape == batch
    # State-independent std: log_std is the learned parameter (0 at init), for every input.
    np.testing.assert_array_equal(log_std, 0.0)
    assert model.actor_head.log_std[...].shape == (2,)
    # The outputs plug straight into the Gaussian head.
    actions = GaussianPolicy().sample((mean, log_std), jax.random.PRNGKey(0))
    assert GaussianPolicy().log_prob((mean, log_std), actions).shape == batch


def test_mlp_policy_shapes_and_heads():
    logits = MLPPolicy(4, 2, rngs=nnx.Rngs(0))(jnp.ones((5, 4)))
    assert logits.shape == (5, 2)
    assert CategoricalPolicy().log_prob(logits, jnp.zeros((5,), jnp.int32)).shape == (5,)
    mean, log_std = MLPPolicy(4, 2, continuous=True, rngs=nnx.Rngs(0))(jnp.ones((5, 4)))
    assert mean.shape == log_std.shape == (5, 2)


def test_orthogonal_init_gains_and_zero_bias():
    model = ActorCritic(4, 2, hidden=(64, 32), rngs=nnx.Rngs(0))
    for torso in (model.actor_torso, model.critic_torso):
        for layer in torso.layers:
            # Orthogonal with gain g: every singular value equals g.
            np.testing.assert_allclose(_singular_values(layer.kernel[...]), math.sqrt(2.0), rtol=1e-5)
            np.testing.assert_array_equal(layer.bias[...], 0.0)
    np.testing.assert_allclose(_singular_values(model.actor_head.out.kernel[...]), 0.01, rtol=1e-5)
    np.testing.assert_allclose(_singular_values(model.critic_head.kernel[...]), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(model.actor_head.out.bias[...], 0.0)
    np.testing.assert_array_equal(model.critic_head.bias[...], 0.0)
    assert [layer.kernel[...].shape for layer in model.actor_torso.layers] == [(4, 64), (64, 32)]


def test_initial_policy_is_near_uniform():
    model = ActorCritic(4, 2, rngs=nnx.Rngs(1))
    obs = jax.random.normal(jax.random.PRNGKey(0), (256, 4))
    logits, _ = model(obs)
    probs = jax.nn.softmax(logits)
    # The 0.01 head gain keeps the first policy close to uniform, so PPO explores evenly.
    assert float(jnp.max(jnp.abs(probs - 0.5))) < 0.05


def test_actor_and_critic_do_not_share_parameters():
    model = ActorCritic(4, 2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    obs = jnp.ones((3, 4))

    def logits_sum(p):
        return nnx.merge(graphdef, p)(obs)[0].sum()

    grads = nnx.to_pure_dict(jax.grad(logits_sum)(params))
    for leaf in jax.tree.leaves(grads["critic_torso"]) + jax.tree.leaves(grads["critic_head"]):
        np.testing.assert_array_equal(leaf, 0.0)
    assert any(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads["actor_torso"]))


def test_relu_activation_and_split_merge_under_jit():
    model = ActorCritic(4, 2, activation="relu", rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    pure = nnx.to_pure_dict(params)
    f = jax.jit(lambda p, s, o: nnx.merge(graphdef, p, s)(o), donate_argnums=())
    logits, value = f(pure, nnx.to_pure_dict(rest), jnp.ones((2, 4)))
    eager_logits, eager_value = model(jnp.ones((2, 4)))
    np.testing.assert_allclose(logits, eager_logits, rtol=1e-6)
    np.testing.assert_allclose(value, eager_value, rtol=1e-6)


def test_rngs_make_models_differ_and_seeds_repeat():
    a = ActorCritic(4, 2, rngs=nnx.Rngs(0)).critic_torso.layers[0].kernel[...]
    b = ActorCritic(4, 2, rngs=nnx.Rngs(0)).critic_torso.layers[0].kernel[...]
    c = ActorCritic(4, 2, rngs=nnx.Rngs(1)).critic_torso.layers[0].kernel[...]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown activation 'swish2'"):
        ActorCritic(4, 2, activation="swish2", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="obs_dim must be a positive int"):
        ActorCritic(0, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="action_dim must be a positive int"):
        MLPPolicy(4, -1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hidden must be a non-empty"):
        MLPPolicy(4, 2, hidden=(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"expects observations of shape \(\.\.\., 4\), got \(2, 5\)"):
        ActorCritic(4, 2, rngs=nnx.Rngs(0))(jnp.ones((2, 5)))


def test_image_observations_are_flattened_before_the_first_layer():
    shape = (10, 10, 4)
    model = ActorCritic(shape, 3, hidden=(8,), activation="relu", rngs=nnx.Rngs(0))
    obs = np.random.default_rng(0).uniform(size=(2, 5, *shape)).astype(np.float32)
    logits, value = model(jnp.asarray(obs))
    assert logits.shape == (2, 5, 3) and value.shape == (2, 5)
    # Independent computation: numpy relu MLP on the row-major flattened observation.
    flat = obs.reshape(2, 5, 400)
    k0, b0 = np.asarray(model.actor_torso.layers[0].kernel[...]), np.asarray(model.actor_torso.layers[0].bias[...])
    k1, b1 = np.asarray(model.actor_head.out.kernel[...]), np.asarray(model.actor_head.out.bias[...])
    np.testing.assert_allclose(logits, np.maximum(flat @ k0 + b0, 0) @ k1 + b1, rtol=1e-4, atol=1e-5)
    assert MLPPolicy(shape, 3, rngs=nnx.Rngs(0))(jnp.asarray(obs)).shape == (2, 5, 3)
    with pytest.raises(ValueError, match=r"ActorCritic expects observations of shape \(\.\.\., 10, 10, 4\), got \(2, 10, 4\)"):
        model(jnp.zeros((2, 10, 4)))
    with pytest.raises(ValueError, match="obs_dim must be a positive int or a shape"):
        ActorCritic((10, 0), 3, rngs=nnx.Rngs(0))
