"""Compiled trajectory collection from gymnax environments: the pure function.

:func:`make_collect` builds a pure function that runs ``num_envs`` copies of an
environment (``vmap``) for ``num_steps`` steps (``lax.scan``) with the current
policy, all in one compiled call. The iterable that ``Trainer.fit`` pulls
batches from, :class:`~artifex_rl.envs.gymnax_rollout.GymnaxRolloutSource`,
jits it and keeps its carry and key on the device.

Batch layout (env-major; ``B = num_envs``, ``T = num_steps``)::

    observations      (B, T, *obs)  float32  observation the action was taken in
    actions           (B, T) int32 | (B, T, D) float32   (unclipped samples)
    log_probs         (B, T)        float32  log pi(action | observation)
    rewards           (B, T)        float32
    dones             (B, T)        float32  1 where the episode ended at this
                                             step (terminated OR truncated)
    values            (B, T)        float32  V(observation)            [actor-critic]
    bootstrap_values  (B, T)        float32  V(true final observation) where the
                                             step was truncated (time limit) and
                                             not terminated, else 0   [actor-critic]
    last_value        (B,)          float32  V(observation after the last step) [actor-critic]
    metrics           dict of ()    float32  episode_return_sum, episode_length_sum,
                                             episodes_finished (episodes that ended
                                             during this rollout)

Auto-reset is done here rather than with ``env.step`` so the true final
observation of a truncated episode is still at hand to evaluate
``bootstrap_values``; ``env.step`` would already have replaced it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnax
import jax
import jax.numpy as jnp
from flax import nnx

from artifex_rl.distributions import CategoricalPolicy, GaussianPolicy, PolicyHead, get_policy_head
from artifex_rl.envs.spaces import ActionSpec, action_spec, to_env_action

Array = jax.Array
Batch = dict[str, Any]
Carry = dict[str, Any]
CollectFn = Callable[[Any, Any, Any, Carry, Array], tuple[Batch, Carry]]


def make_env(name: str, env_params: Any = None, **env_kwargs: Any) -> tuple[Any, Any]:
    """Build a gymnax environment by id.

    Args:
      name: a gymnax id such as ``"CartPole-v1"`` (see ``gymnax.registered_envs``).
      env_params: replaces the environment's default params (e.g.
        ``env.default_params.replace(max_steps_in_episode=50)``).
      **env_kwargs: passed to the environment's constructor.

    Returns:
      ``(env, env_params)``.

    Raises:
      ValueError: ``name`` is not a registered gymnax environment.
    """
    if not isinstance(name, str) or name not in gymnax.registered_envs:
        raise ValueError(
            f"unknown gymnax environment {name!r}; expected one of {', '.join(gymnax.registered_envs)}"
        )
    env, default_params = gymnax.make(name, **env_kwargs)
    return env, default_params if env_params is None else env_params


# --------------------------------------------------------------------------------------
# Model output structure


def is_pair(x: Any) -> bool:
    """Whether ``x`` is a 2-tuple or 2-list (``(policy_output, value)``, or a Gaussian's ``(mean, log_std)``)."""
    return isinstance(x, (tuple, list)) and len(x) == 2


def detect_actor_critic(output: Any, policy: PolicyHead) -> bool:
    """Whether a model ``output`` is ``(policy_output, value)`` rather than ``policy_output``.

    Categorical policies output one logits array, so any pair is actor-critic.
    Gaussian policies already output a pair ``(mean, log_std)``, so a pair is
    actor-critic only if its first element is itself a pair. For other heads a
    pair whose second element has one axis fewer than the first is taken as
    ``(policy_output, value)``; pass ``actor_critic=`` explicitly if that guess
    is wrong for your model.
    """
    if not is_pair(output):
        return False
    if isinstance(policy, CategoricalPolicy):
        return True
    if isinstance(policy, GaussianPolicy):
        return is_pair(output[0])
    first = jax.tree.leaves(output[0])
    return bool(first) and jnp.ndim(output[1]) == jnp.ndim(first[0]) - 1


def split_output(output: Any, actor_critic: bool) -> tuple[Any, Array | None]:
    """``(policy_output, value)`` of a model's output; ``value`` is ``None`` for a policy-only model."""
    if actor_critic:
        return output[0], output[1]
    return output, None


# --------------------------------------------------------------------------------------
# The pure collection function


def init_carry(env: Any, env_params: Any, num_envs: int, key: Array) -> Carry:
    """Reset ``num_envs`` environments.

    Returns a carry dict: ``obs (N, *obs)`` float32, ``env_state`` (the gymnax
    state, leaves ``(N, ...)``), ``episode_return (N,)`` float32 and
    ``episode_length (N,)`` int32 of the episodes in progress.
    """
    # env_params are closed over, not vmapped: some envs use them in Python control flow.
    obs, env_state = jax.vmap(lambda k: env.reset_env(k, env_params))(jax.random.split(key, num_envs))
    return {
        # One observation dtype throughout: scan carries need it, and models want floats.
        "obs": jnp.asarray(obs, jnp.float32),
        "env_state": env_state,
        "episode_return": jnp.zeros((num_envs,), jnp.float32),
        "episode_length": jnp.zeros((num_envs,), jnp.int32),
    }


def max_truncations_per_env(env_params: Any, num_steps: int) -> int | None:
    """At most how many time-limit truncations one env can have in ``num_steps`` steps.

    An episode runs ``max_steps_in_episode`` (``L``) steps before the time limit
    cuts it, and any reset (termination or truncation) starts the count again,
    so ``num_steps`` steps hold at most ``ceil(num_steps / L)`` truncations.
    None when the params carry no concrete ``L``. The collector uses it only as
    a size hint and falls back to every row if a rollout ever has more.
    """
    limit = getattr(env_params, "max_steps_in_episode", None)
    try:
        limit = int(limit)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None
    return -(-num_steps // limit) if limit >= 1 else None


def make_collect(
    env: Any,
    env_params: Any,
    *,
    num_envs: int,
    num_steps: int,
    policy: str | PolicyHead = "categorical",
    actor_critic: bool = True,
    spec: ActionSpec | None = None,
) -> CollectFn:
    """Build ``collect(graphdef, params, model_state, carry, key) -> (batch, new_carry)``.

    The returned function is pure and un-jitted; jit it with ``graphdef``
    static (``jax.jit(collect, static_argnums=0)``), or use
    :class:`GymnaxRolloutSource`, which does that and keeps the carry. It rebuilds the model with
    ``nnx.merge(graphdef, params, model_state)``, calls it on the ``(N, *obs)``
    observations (models are expected to handle leading batch axes), samples
    actions with ``policy``, steps every env with ``env.step_env`` and resets
    the ones whose episode ended. See the module docstring for the batch.

    Args:
      env, env_params: a gymnax environment and its params (baked into the trace).
      num_envs: ``B``, environments stepped in parallel.
      num_steps: ``T``, steps per environment per call.
      policy: a policy head or its name (``"categorical"`` / ``"gaussian"``).
      actor_critic: the model returns ``(policy_output, value)``; if False it
        returns ``policy_output`` only and the value keys are left out.
      spec: the env's action spec (read from ``env.action_space`` if omitted).
    """
    head = get_policy_head(policy)
    spec = action_spec(env.action_space(env_params)) if spec is None else spec

    def env_step(key: Array, state: Any, action: Array):
        key_step, key_reset = jax.random.split(key)
        obs_step, state_step, reward, terminated, _ = env.step_env(key_step, state, action, env_params)
        terminated = jnp.asarray(terminated, jnp.bool_)
        # Termination wins: a state that is both terminal and at the time limit has
        # no future, so it must not be bootstrapped.
        truncated = jnp.logical_and(env.is_truncated(state_step, env_params), ~terminated)
        done = jnp.logical_or(terminated, truncated)
        obs_reset, state_reset = env.reset_env(key_reset, env_params)
        next_state = jax.tree.map(lambda r, s: jnp.where(done, r, s), state_reset, state_step)
        obs_step = jnp.asarray(obs_step, jnp.float32)
        next_obs = jnp.where(done, jnp.asarray(obs_reset, jnp.float32), obs_step)
        reward = jnp.reshape(jnp.asarray(reward, jnp.float32), ())
        return next_obs, next_state, obs_step, reward, done, truncated

    rows = num_steps * num_envs
    per_env = max_truncations_per_env(env_params, num_steps)
    # How many final observations to evaluate: at most ``per_env`` truncations per
    # env (4 of CartPole's 512 rows), or every row when no time limit is known.
    max_truncated = rows if per_env is None else min(rows, per_env * num_envs)

    def collect(graphdef: Any, params: Any, model_state: Any, carry: Carry, key: Array):
        def apply(obs: Array) -> tuple[Any, Array | None]:
            # Merging inside each traced use (not once outside the scan) keeps any
            # state the model might mutate from leaking tracers across the scan.
            model = nnx.merge(graphdef, params, model_state)
            return split_output(model(obs), actor_critic)

        def value_of(obs: Array) -> Array:
            return apply(obs)[1].astype(jnp.float32).reshape(obs.shape[0])

        def bootstrap_values(final_obs: Array, truncated: Array) -> Array:
            """``(T, B)``: V(final observation) where the time limit cut the episode, else 0."""
            flat_obs = final_obs.reshape(rows, *final_obs.shape[2:])
            flat_truncated = truncated.reshape(rows)

            def every_row() -> Array:  # no time limit known, or more truncations than it allows
                return jnp.where(flat_truncated, value_of(flat_obs), 0.0)

            def gathered() -> Array:
                # Only the truncated rows go through the model; index ``rows`` pads
                # the list and is dropped when the values are scattered back.
                (index,) = jnp.nonzero(flat_truncated, size=max_truncated, fill_value=rows)
                picked = flat_obs.at[index].get(mode="fill", fill_value=0)
                return jnp.zeros((rows,), jnp.float32).at[index].set(value_of(picked), mode="drop")

            if max_truncated == rows:
                values = every_row()
            else:
                values = jax.lax.cond(jnp.sum(flat_truncated) <= max_truncated, gathered, every_row)
            return values.reshape(num_steps, num_envs)

        def step(state: tuple, step_key: Array):
            obs, env_state, ep_return, ep_length, ret_sum, len_sum, n_done = state
            key_action, key_env = jax.random.split(step_key)
            policy_output, value = apply(obs)
            action = head.sample(policy_output, key_action)
            log_prob = head.log_prob(policy_output, action)
            next_obs, env_state, final_obs, reward, done, truncated = jax.vmap(env_step)(
                jax.random.split(key_env, num_envs), env_state, to_env_action(spec, action)
            )
            ep_return = ep_return + reward
            ep_length = ep_length + 1
            ret_sum = ret_sum + jnp.sum(jnp.where(done, ep_return, 0.0))
            len_sum = len_sum + jnp.sum(jnp.where(done, ep_length, 0)).astype(jnp.float32)
            n_done = n_done + jnp.sum(done).astype(jnp.float32)
            out = {
                "observations": obs,
                "actions": action,
                "log_probs": log_prob.astype(jnp.float32),
                "rewards": reward,
                "dones": done.astype(jnp.float32),
            }
            if actor_critic:
                out["values"] = value.astype(jnp.float32)
                # V(final observation) is needed only where the time limit cut the
                # episode. One batched forward pass over all T * B final observations
                # after the scan costs far less on XLA:CPU than a lax.cond per step.
                out["final_observations"] = final_obs
                out["truncated"] = truncated
            ep_return = jnp.where(done, 0.0, ep_return)
            ep_length = jnp.where(done, 0, ep_length)
            return (next_obs, env_state, ep_return, ep_length, ret_sum, len_sum, n_done), out

        zero = jnp.zeros((), jnp.float32)
        init = (
            carry["obs"],
            carry["env_state"],
            carry["episode_return"],
            carry["episode_length"],
            zero,
            zero,
            zero,
        )
        final, steps = jax.lax.scan(step, init, jax.random.split(key, num_steps))
        obs, env_state, ep_return, ep_length, ret_sum, len_sum, n_done = final
        # scan stacks time first; trainers want one trajectory per row.
        if actor_critic:
            final_obs, truncated = steps.pop("final_observations"), steps.pop("truncated")
            steps["bootstrap_values"] = bootstrap_values(final_obs, truncated)
        batch: Batch = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), steps)
        if actor_critic:
            batch["last_value"] = apply(obs)[1].astype(jnp.float32)
        batch["metrics"] = {
            "episode_return_sum": ret_sum,
            "episode_length_sum": len_sum,
            "episodes_finished": n_done,
        }
        new_carry = {
            "obs": obs,
            "env_state": env_state,
            "episode_return": ep_return,
            "episode_length": ep_length,
        }
        return batch, new_carry

    return collect
