"""Gymnax rollouts: layout, auto-reset and episode accounting, truncation, errors, resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from gymnax.environments.classic_control import CartPole

from artifex_rl.envs import GymnaxRolloutSource, make_env
from artifex_rl.envs.collect import init_carry, make_collect, max_truncations_per_env
from artifex_rl.models import ActorCritic, MLPPolicy


class StandInTrainer:
    """What a rollout source reads from a Trainer: a policy snapshot (here kept in ``train_state``)."""

    def policy_snapshot(self):
        from artifex_rl import PolicySnapshot

        return PolicySnapshot(self.graphdef, self.train_state["params"], self.train_state["model_state"])

    def __init__(self, model: nnx.Module):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.graphdef = graphdef
        self.train_state = {"params": nnx.to_pure_dict(params), "model_state": nnx.to_pure_dict(rest)}

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.train_state["params"], self.train_state["model_state"])


HIDDEN = (16, 16)  # one width everywhere: eager init ops then compile once per file


def cartpole_trainer(seed: int = 0, action_dim: int = 2) -> StandInTrainer:
    return StandInTrainer(ActorCritic(4, action_dim, hidden=HIDDEN, rngs=nnx.Rngs(seed)))


# Most tests use these sizes: sources with equal settings share one compiled function,
# which keeps this file fast. B != T so a transposed layout cannot pass.
B, T = 3, 40


def cartpole_source(trainer: StandInTrainer, **kwargs) -> GymnaxRolloutSource:
    return GymnaxRolloutSource("CartPole-v1", trainer, num_envs=B, num_steps=T, **kwargs)


def reference_rollout(env, env_params, model, carry, key, actions, num_steps):
    """A slow host loop over gymnax's own auto-resetting ``env.step``, one env at a time.

    Uses the keys the compiled rollout derives (one key per step, split into an
    action key and an env key, the env key split per env) and replays the
    actions it recorded, so any difference lies in stepping, resetting or
    bookkeeping. Returns the per-step arrays (env-major) and the episode sums.
    """
    num_envs = carry["obs"].shape[0]
    value_of = jax.jit(lambda o: model(o)[1])  # one compile instead of one per eager op
    states = [jax.tree.map(lambda x, i=i: x[i], carry["env_state"]) for i in range(num_envs)]
    obs = np.asarray(carry["obs"])
    ep_ret = np.asarray(carry["episode_return"], np.float64).copy()
    ep_len = np.asarray(carry["episode_length"]).copy()
    out = {k: np.zeros((num_envs, num_steps)) for k in ("rewards", "dones", "bootstrap_values", "values")}
    out["observations"] = np.zeros((num_envs, num_steps, obs.shape[-1]))
    ret_sum = len_sum = finished = 0.0
    out["sampled_actions"] = np.zeros((num_envs, num_steps), np.int32)
    logits_of = jax.jit(lambda o: model(o)[0])
    for t, step_key in enumerate(jax.random.split(key, num_steps)):
        key_action, key_env = jax.random.split(step_key)
        env_keys = jax.random.split(key_env, num_envs)
        out["observations"][:, t] = obs
        # What the policy draws from this observation with this step's action key
        # (the replayed ``actions`` must be exactly these).
        out["sampled_actions"][:, t] = np.asarray(jax.random.categorical(key_action, logits_of(jnp.asarray(obs))))
        out["values"][:, t] = np.asarray(value_of(jnp.asarray(obs)))
        next_obs = np.zeros_like(obs)
        for i in range(num_envs):
            o, states[i], r, term, trunc, info = env.step(env_keys[i], states[i], actions[i, t], env_params)
            term, trunc = bool(term), bool(trunc)
            done = term or trunc
            next_obs[i] = np.asarray(o)
            ep_ret[i] += float(r)
            ep_len[i] += 1
            out["rewards"][i, t] = float(r)
            out["dones"][i, t] = float(done)
            if trunc and not term:
                final = jnp.broadcast_to(info["final_observation"], obs.shape)
                out["bootstrap_values"][i, t] = float(value_of(final)[0])
            if done:
                ret_sum += ep_ret[i]
                len_sum += ep_len[i]
                finished += 1
                ep_ret[i], ep_len[i] = 0.0, 0
        obs = next_obs
    sums = {"episode_return_sum": ret_sum, "episode_length_sum": len_sum, "episodes_finished": finished}
    return out, sums, obs, ep_ret, ep_len


# --------------------------------------------------------------------------------------


def test_batch_layout_discrete_actor_critic():
    trainer = cartpole_trainer()
    source = cartpole_source(trainer)
    batch = next(source)
    expect = {
        "observations": ((B, T, 4), jnp.float32),
        "actions": ((B, T), jnp.int32),
        "log_probs": ((B, T), jnp.float32),
        "values": ((B, T), jnp.float32),
        "rewards": ((B, T), jnp.float32),
        "dones": ((B, T), jnp.float32),
        "bootstrap_values": ((B, T), jnp.float32),
        "last_value": ((B,), jnp.float32),
    }
    assert set(batch) == set(expect) | {"metrics"}
    for name, (shape, dtype) in expect.items():
        assert batch[name].shape == shape, name
        assert batch[name].dtype == dtype, name
    assert set(batch["metrics"]) == {"episode_return_sum", "episode_length_sum", "episodes_finished"}
    assert all(v.shape == () for v in batch["metrics"].values())
    # Log-probs and values are those of the policy that acted, on the stored observations.
    logits, values = trainer.model()(batch["observations"])
    logp = jax.nn.log_softmax(logits)
    expected_logp = jnp.take_along_axis(logp, batch["actions"][..., None], -1)[..., 0]
    np.testing.assert_allclose(batch["log_probs"], expected_logp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch["values"], values, rtol=1e-5, atol=1e-6)
    assert set(np.unique(np.asarray(batch["dones"]))) <= {0.0, 1.0}
    assert source.env_steps == B * T


def test_batch_layout_continuous_and_policy_only():
    model = ActorCritic(3, 1, hidden=HIDDEN, continuous=True, rngs=nnx.Rngs(0))
    source = GymnaxRolloutSource(
        "Pendulum-v1", StandInTrainer(model), num_envs=2, num_steps=5, policy="gaussian"
    )
    assert source.actor_critic
    batch = next(source)
    assert batch["actions"].shape == (2, 5, 1) and batch["actions"].dtype == jnp.float32
    assert batch["log_probs"].shape == batch["values"].shape == (2, 5)

    policy_only = StandInTrainer(MLPPolicy(4, 2, hidden=HIDDEN, rngs=nnx.Rngs(0)))
    source = GymnaxRolloutSource("CartPole-v1", policy_only, num_envs=2, num_steps=5)
    assert not source.actor_critic
    batch = next(source)
    assert set(batch) == {"observations", "actions", "log_probs", "rewards", "dones", "metrics"}
    assert batch["observations"].shape == (2, 5, 4)


@pytest.mark.parametrize("max_steps", [500, 12])
def test_matches_gymnax_step_loop_across_two_batches(max_steps):
    """Auto-reset, rewards, dones, episode sums and (with max_steps=12) truncation bootstraps."""
    trainer = cartpole_trainer(seed=1)
    env, default_params = make_env("CartPole-v1")
    env_params = default_params.replace(max_steps_in_episode=max_steps)
    source = cartpole_source(trainer, env_params=env_params, seed=3)
    model = trainer.model()
    truncations = 0
    for _ in range(2):  # the second batch starts from the carry the first one left
        before = source.state_dict()
        carry = {**before["carry"], "env_state": source._carry["env_state"]}
        _, collect_key = jax.random.split(before["key"])
        batch = next(source)
        actions = np.asarray(batch["actions"])
        ref, sums, obs, ep_ret, ep_len = reference_rollout(
            env, env_params, model, carry, collect_key, actions, T
        )
        for name in ("observations", "rewards", "dones", "values", "bootstrap_values"):
            np.testing.assert_allclose(batch[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
        # Each step's actions are the policy's own draws with that step's action key.
        np.testing.assert_array_equal(actions, ref["sampled_actions"])
        for name, value in sums.items():
            np.testing.assert_allclose(batch["metrics"][name], value, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(source._carry["obs"], obs, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(source._carry["episode_return"], ep_ret)
        np.testing.assert_array_equal(source._carry["episode_length"], ep_len)
        np.testing.assert_allclose(batch["last_value"], model(jnp.asarray(obs))[1], rtol=1e-5, atol=1e-6)
        truncations += int(np.sum(ref["bootstrap_values"] != 0))
    assert float(batch["metrics"]["episodes_finished"]) > 0
    if max_steps == 12:
        # A random CartPole policy survives 12 steps most of the time, so most episodes
        # end by truncation and carry a bootstrap value; nothing truncates at 500.
        assert truncations >= 6
    else:
        assert truncations == 0
        np.testing.assert_array_equal(batch["bootstrap_values"], 0.0)


def test_truncation_bootstraps_the_final_observation_not_the_reset_one():
    trainer = cartpole_trainer(seed=2)
    env, params = make_env("CartPole-v1")
    params = params.replace(max_steps_in_episode=5)
    # A random CartPole policy never falls within 5 steps, so every episode is cut by the
    # time limit: at t = 4, 9, 14, ...
    source = cartpole_source(trainer, env_params=params)
    batch = next(source)
    model = trainer.model()
    dones = np.asarray(batch["dones"])
    ends = np.arange(4, T, 5)
    np.testing.assert_array_equal(dones[:, ends], 1.0)
    np.testing.assert_array_equal(np.delete(dones, ends, axis=1), 0.0)
    obs = np.asarray(batch["observations"])
    # The final observation of the episode ending at t=4 is not stored (obs[:, 5] is a
    # fresh reset), but CartPole's dynamics are deterministic, so it can be recomputed.
    for i in range(B):
        state = env.reset_env(jax.random.PRNGKey(0), params)[1]
        x, x_dot, theta, theta_dot = obs[i, 4]
        state = state.replace(x=x, x_dot=x_dot, theta=theta, theta_dot=theta_dot, time=4)
        final_obs = env.step_env(jax.random.PRNGKey(0), state, batch["actions"][i, 4], params)[0]
        expected = model(final_obs[None])[1][0]
        np.testing.assert_allclose(batch["bootstrap_values"][i, 4], expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(batch["bootstrap_values"][i, 4], model(obs[i, 5][None])[1][0])
    np.testing.assert_array_equal(np.delete(np.asarray(batch["bootstrap_values"]), ends, axis=1), 0.0)


class CartPoleCutEveryThreeSteps(CartPole):
    """Cuts every episode after 3 steps although its params say 500."""

    def is_truncated(self, state, params):
        return state.time >= 3


def test_more_truncations_than_the_params_time_limit_allows_are_all_bootstrapped():
    """The collector evaluates at most ``B * ceil(T / max_steps_in_episode)`` final
    observations (here B); an env that truncates more often than its params say
    must still get every bootstrap value (the fallback over all rows)."""
    env = CartPoleCutEveryThreeSteps()
    params = env.default_params
    assert max_truncations_per_env(params, T) == 1
    trainer = cartpole_trainer(seed=4)
    collect = jax.jit(make_collect(env, params, num_envs=B, num_steps=T), static_argnums=0)
    carry = init_carry(env, params, B, jax.random.PRNGKey(5))
    key = jax.random.PRNGKey(6)
    snapshot = trainer.policy_snapshot()
    batch, _ = collect(snapshot.graphdef, snapshot.params, snapshot.model_state, carry, key)
    ref, *_ = reference_rollout(env, params, trainer.model(), carry, key, np.asarray(batch["actions"]), T)
    assert np.sum(ref["bootstrap_values"] != 0) > B  # more than the hint allows
    for name in ("dones", "bootstrap_values"):
        np.testing.assert_allclose(batch[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_max_truncations_per_env_reads_the_time_limit():
    _, params = make_env("CartPole-v1")
    assert max_truncations_per_env(params, 128) == 1
    assert max_truncations_per_env(params.replace(max_steps_in_episode=12), 40) == 4
    assert max_truncations_per_env(params.replace(max_steps_in_episode=10), 40) == 4
    assert max_truncations_per_env(object(), 40) is None


def _perturb(p):
    # Not a uniform shift: softmax would ignore that and the check below would be weak.
    return p + 0.3 * jnp.sin(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape))


def _log_probs(model, batch):
    logits, _ = model(batch["observations"])
    return jnp.take_along_axis(jax.nn.log_softmax(logits), batch["actions"][..., None], -1)[..., 0]


def test_compiles_once_and_reads_current_params():
    trainer = cartpole_trainer()
    source = cartpole_source(trainer, seed=5)
    next(source)
    for _ in range(3):
        old_model = trainer.model()
        # What a trainer step does: new arrays of the same shapes in train_state.
        trainer.train_state = {
            **trainer.train_state,
            "params": jax.tree.map(_perturb, trainer.train_state["params"]),
        }
        batch = next(source)
        np.testing.assert_allclose(
            batch["log_probs"], _log_probs(trainer.model(), batch), rtol=1e-5, atol=1e-6
        )
        assert float(jnp.max(jnp.abs(batch["log_probs"] - _log_probs(old_model, batch)))) > 1e-3
    assert source.trace_count == 1
    assert source.iterations == 4 and source.env_steps == 4 * B * T


def test_state_dict_round_trip_gives_identical_next_batch():
    trainer = cartpole_trainer()
    source = cartpole_source(trainer, seed=7)
    next(source)
    next(source)
    # As a checkpoint would store it: host numpy arrays.
    saved = jax.tree.map(np.asarray, source.state_dict())
    expected = next(source)

    resumed = cartpole_source(trainer, seed=999)
    resumed.load_state_dict(saved)
    assert resumed.iterations == 2 and resumed.env_steps == 2 * B * T
    got = next(resumed)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)

    other = GymnaxRolloutSource("CartPole-v1", trainer, num_envs=B + 1, num_steps=T)
    with pytest.raises(ValueError, match="rollout state does not match this source"):
        other.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"missing \['key'\]"):
        other.load_state_dict({"carry": saved["carry"], "iterations": 0})


def test_epoch_length():
    trainer = cartpole_trainer()
    source = cartpole_source(trainer, iterations_per_epoch=3)
    assert len(source) == 3
    assert len(list(source)) == 3
    assert len(list(source)) == 3  # each iter() is a new epoch over the same env stream
    assert source.iterations == 6
    infinite = cartpole_source(trainer)
    assert iter(infinite) is infinite
    with pytest.raises(TypeError, match="infinite"):
        len(infinite)


def test_bad_inputs_fail_before_compiling():
    trainer = cartpole_trainer()
    with pytest.raises(ValueError, match=r"unknown gymnax environment 'CartPole-v9'.*CartPole-v1"):
        make_env("CartPole-v9")
    with pytest.raises(ValueError, match="unknown gymnax environment"):
        GymnaxRolloutSource("Nope", trainer, num_envs=2, num_steps=4)
    with pytest.raises(ValueError, match=r"2 discrete actions.*\(2, 2\).*got \(2, 3\)"):
        GymnaxRolloutSource("CartPole-v1", cartpole_trainer(action_dim=3), num_envs=2, num_steps=4)
    with pytest.raises(ValueError, match="discrete action space .* policy='categorical'"):
        GymnaxRolloutSource("CartPole-v1", trainer, num_envs=2, num_steps=4, policy="gaussian")
    with pytest.raises(ValueError, match="continuous action space .* policy='gaussian'"):
        GymnaxRolloutSource("Pendulum-v1", trainer, num_envs=2, num_steps=4)
    pendulum_bad = StandInTrainer(ActorCritic(3, 2, hidden=HIDDEN, continuous=True, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"mean of shape \(2, 1\)"):
        GymnaxRolloutSource("Pendulum-v1", pendulum_bad, num_envs=2, num_steps=4, policy="gaussian")
    with pytest.raises(ValueError, match=r"could not be applied .* observations of shape \(2, 4\)"):
        GymnaxRolloutSource(
            "CartPole-v1",
            StandInTrainer(ActorCritic(5, 2, hidden=HIDDEN, rngs=nnx.Rngs(0))),
            num_envs=2,
            num_steps=4,
        )
    with pytest.raises(ValueError, match="num_envs must be a positive int"):
        GymnaxRolloutSource("CartPole-v1", trainer, num_envs=0, num_steps=4)
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        GymnaxRolloutSource("CartPole-v1", trainer, num_envs=2, num_steps=2.5)
    with pytest.raises(ValueError, match="unknown policy 'beta'"):
        GymnaxRolloutSource("CartPole-v1", trainer, num_envs=2, num_steps=4, policy="beta")
    with pytest.raises(ValueError, match="'tokens' is for language models"):
        GymnaxRolloutSource("CartPole-v1", trainer, num_envs=2, num_steps=4, policy="tokens")
    with pytest.raises(TypeError, match="policy must be a zero-argument callable returning a PolicySnapshot"):
        GymnaxRolloutSource("CartPole-v1", object(), num_envs=2, num_steps=4)


class _FixedBatchCritic(nnx.Module):
    """An actor-critic that only works for exactly B observations (its value is cut to B)."""

    def __init__(self):
        self.inner = ActorCritic(4, 2, hidden=HIDDEN, rngs=nnx.Rngs(0))

    def __call__(self, obs):
        logits, value = self.inner(obs)
        return logits, value[:B]


def test_a_model_that_cannot_score_all_final_observations_is_rejected_before_compiling():
    trainer = StandInTrainer(_FixedBatchCritic())
    with pytest.raises(ValueError, match=rf"value output on \({B * T}, 4\) observations has shape \({B},\)"):
        cartpole_source(trainer)
