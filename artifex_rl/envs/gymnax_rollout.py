"""Compiled trajectory collection from gymnax environments.

Long because the pure collector, its validation of the model against the
environment and the resumable iterable share one set of settings; a split into
collect/validate/source modules is planned (core review B8).

:func:`make_collect` builds a pure function that runs ``num_envs`` copies of an
environment (``vmap``) for ``num_steps`` steps (``lax.scan``) with the current
policy, all in one compiled call. :class:`GymnaxRolloutSource` wraps it as an
iterable that ``Trainer.fit`` pulls batches from, reading the trainer's
current parameters at every pull, so ``fit`` alternates "collect with the
latest policy" and "update on that batch" without leaving the device.

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

import collections
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, serialization

from artifex_rl.core.snapshot import as_policy_provider
from artifex_rl.distributions import (
    CategoricalPolicy,
    GaussianPolicy,
    PolicyHead,
    TokenPolicy,
    get_policy_head,
)
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


def _is_pair(x: Any) -> bool:
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
    if not _is_pair(output):
        return False
    if isinstance(policy, CategoricalPolicy):
        return True
    if isinstance(policy, GaussianPolicy):
        return _is_pair(output[0])
    first = jax.tree.leaves(output[0])
    return bool(first) and jnp.ndim(output[1]) == jnp.ndim(first[0]) - 1


def _split_output(output: Any, actor_critic: bool) -> tuple[Any, Array | None]:
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
            return _split_output(model(obs), actor_critic)

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


# --------------------------------------------------------------------------------------
# The iterable that fit() pulls from


class _CompiledCollect:
    """One jitted ``(params, model_state, carry, key) -> (batch, carry, next_key)``.

    Splitting the key inside keeps one dispatch per batch; ``traces`` counts
    (re)compilations so tests can check there are none after the first.
    ``batch_fn`` is the same collection as a pure function of
    ``(params, model_state, {"carry", "key"})``, for ``fit`` to fuse with its
    update step (see :mod:`artifex_rl.device_source`).
    """

    def __init__(self, collect: CollectFn, graphdef: Any):
        self.traces = 0

        def run(params: Any, model_state: Any, carry: Carry, key: Array):
            self.traces += 1  # a Python side effect: runs once per trace, not per call
            key, collect_key = jax.random.split(key)
            batch, carry = collect(graphdef, params, model_state, carry, collect_key)
            return batch, carry, key

        def batch_fn(params: Any, model_state: Any, source_state: dict[str, Any]):
            self.traces += 1
            key, collect_key = jax.random.split(source_state["key"])
            batch, carry = collect(graphdef, params, model_state, source_state["carry"], collect_key)
            return batch, {"carry": carry, "key": key}

        self.fn = jax.jit(run)
        self.batch_fn = batch_fn


_SHARED: collections.OrderedDict[Any, Any] = collections.OrderedDict()
_SHARED_MAX = 32


def _shared(key: Any, build: Callable[[], Any]) -> Any:
    """A small LRU of compiled functions; settings that cannot be hashed are not shared."""
    try:
        hit = _SHARED.get(key)
    except TypeError:
        return build()
    if hit is None:
        hit = _SHARED[key] = build()
        if len(_SHARED) > _SHARED_MAX:
            _SHARED.popitem(last=False)
    else:
        _SHARED.move_to_end(key)
    return hit


@dataclasses.dataclass(frozen=True)
class _ModelInfo:
    actor_critic: bool
    output: Any  # ShapeDtypeStructs of the model output on (num_envs, *obs)


def _model_state_of(policy: Any) -> tuple[Any, Any, Any]:
    """``(graphdef, params, model_state)`` of the policy now (a provider's snapshot)."""
    snapshot = policy()
    return snapshot.graphdef, snapshot.params, snapshot.model_state


class GymnaxRolloutSource:
    """An iterable of rollout batches collected with a trainer's current policy.

    Each ``next()`` runs one compiled :func:`make_collect` call with the
    parameters found in ``trainer.train_state`` at that moment, so batches are
    on-policy for a trainer that updates between pulls. Environment carry and
    PRNG key stay on the device between calls (no host sync). When
    ``trainer`` fits it with ``steps_per_execution > 1``, the same collection
    runs inside the trainer's compiled call instead, fused with the update
    (:mod:`artifex_rl.device_source`).

    Actor-critic models are also called once per batch on the final
    observations of truncated steps (for their bootstrap values; at most
    ``B * ceil(T / max_steps_in_episode)`` rows), so they must accept any
    leading batch size; the final observations are kept until then, which
    doubles the rollout's observation memory.

    Args:
      env_name: a gymnax id, e.g. ``"CartPole-v1"``.
      trainer: the trainer whose policy collects (or any zero-argument callable
        returning a :class:`~artifex_rl.core.snapshot.PolicySnapshot`).
      num_envs: ``B``, environments run in parallel.
      num_steps: ``T``, steps per environment per batch.
      policy: ``"categorical"`` (discrete envs), ``"gaussian"`` (Box envs) or a PolicyHead.
      seed: seeds the environment resets and action sampling.
      env_params: replaces the environment's default params.
      iterations_per_epoch: if set, ``iter()`` yields this many batches (an
        "epoch" for ``fit``) and ``len()`` is defined; otherwise iteration is
        infinite and ``fit`` stops at ``max_steps``.
      actor_critic: whether the model returns ``(policy_output, value)``;
        detected from the model's output structure when ``None``.

    Raises (before anything is compiled):
      ValueError: unknown env name, non-positive sizes, a policy head that does
        not fit the action space, or a model whose output has the wrong shape.
      TypeError: ``trainer`` lacks ``graphdef`` / ``train_state``.
    """

    def __init__(
        self,
        env_name: str,
        trainer: Any,
        *,
        num_envs: int,
        num_steps: int,
        policy: str | PolicyHead = "categorical",
        seed: int = 0,
        env_params: Any = None,
        iterations_per_epoch: int | None = None,
        actor_critic: bool | None = None,
    ):
        for name, value in (("num_envs", num_envs), ("num_steps", num_steps)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if iterations_per_epoch is not None and (
            not isinstance(iterations_per_epoch, (int, np.integer)) or iterations_per_epoch <= 0
        ):
            raise ValueError(
                f"iterations_per_epoch must be a positive int or None, got {iterations_per_epoch!r}"
            )
        self.env_name = env_name
        self.env, self.env_params = make_env(env_name, env_params)
        self.num_envs = int(num_envs)
        self.num_steps = int(num_steps)
        self.iterations_per_epoch = None if iterations_per_epoch is None else int(iterations_per_epoch)
        self.policy = get_policy_head(policy)
        # Sources read a policy snapshot, not the trainer; fit fuses this source
        # into its compiled call only for the trainer whose policy it reads.
        self.policy_provider = as_policy_provider(trainer)
        self.policy_owner = trainer if hasattr(trainer, "policy_snapshot") else None
        self.trainer = self.policy_owner
        self.action_spec = action_spec(self.env.action_space(self.env_params))

        graphdef, params, model_state = _model_state_of(self.policy_provider)
        info = self._check_model(graphdef, params, model_state, actor_critic)
        self.actor_critic = info.actor_critic

        self._collect = make_collect(
            self.env,
            self.env_params,
            num_envs=self.num_envs,
            num_steps=self.num_steps,
            policy=self.policy,
            actor_critic=self.actor_critic,
            spec=self.action_spec,
        )
        # Everything the compiled code depends on besides the graphdef. Sources with
        # equal settings share compiled functions (a resumed run builds a new source).
        self._settings = (
            self.env_name,
            self.env_params,
            self.num_envs,
            self.num_steps,
            self.policy,
            self.actor_critic,
        )
        self._last_graphdef: Any = None
        self._last_step: _CompiledCollect | None = None
        self._used: list[_CompiledCollect] = []

        key = jax.random.PRNGKey(seed)
        reset_key, self._key = jax.random.split(key)
        env, env_params, n = self.env, self.env_params, self.num_envs
        reset = _shared(
            ("reset", *self._settings[:3]), lambda: jax.jit(lambda k: init_carry(env, env_params, n, k))
        )
        self._carry = reset(reset_key)
        # On a trainer's mesh the environments are split over its data axis
        # (each device steps its own); the compiled rollout keeps that split.
        self._placement = getattr(self.policy_owner, "placement", None)
        self._place_state()
        self.iterations = 0

    def _place_state(self) -> None:
        if self._placement is not None:
            self.source_state = self._placement.place_source_state(self.source_state)

    # -- validation --------------------------------------------------------------------

    def _check_model(
        self, graphdef: Any, params: Any, model_state: Any, actor_critic: bool | None
    ) -> _ModelInfo:
        spec, head = self.action_spec, self.policy
        if spec.discrete and isinstance(head, GaussianPolicy):
            raise ValueError(
                f"{self.env_name} has a discrete action space {spec.describe()} but the policy "
                "is 'gaussian'; use policy='categorical'"
            )
        if not spec.discrete and isinstance(head, CategoricalPolicy):
            raise ValueError(
                f"{self.env_name} has a continuous action space {spec.describe()} but the "
                "policy is 'categorical'; use policy='gaussian'"
            )
        if isinstance(head, TokenPolicy):
            raise ValueError("policy 'tokens' is for language models; use 'categorical' or 'gaussian'")

        # env_params stay Python constants, as in the compiled rollout (some envs branch on them).
        obs = jax.eval_shape(lambda k: self.env.reset_env(k, self.env_params), jax.random.PRNGKey(0))[0]
        obs = jax.ShapeDtypeStruct((self.num_envs, *obs.shape), jnp.float32)
        try:
            output = jax.eval_shape(lambda p, s, o: nnx.merge(graphdef, p, s)(o), params, model_state, obs)
        except Exception as e:  # noqa: BLE001 - re-raised with the shapes that matter
            raise ValueError(
                f"the model could not be applied to {self.env_name} observations of shape "
                f"{obs.shape} (num_envs, *obs): {type(e).__name__}: {e}"
            ) from e

        if actor_critic is None:
            actor_critic = detect_actor_critic(output, head)
        policy_output, value = _split_output(output, actor_critic)
        B = self.num_envs
        if actor_critic and tuple(value.shape) != (B,):
            raise ValueError(
                f"the model's value output has shape {tuple(value.shape)}; expected ({B},) "
                f"(num_envs,) for observations {obs.shape}"
            )
        if isinstance(head, CategoricalPolicy):
            got = getattr(policy_output, "shape", None)
            if got is None or tuple(got) != (B, spec.num_actions):
                raise ValueError(
                    f"{self.env_name} has {spec.num_actions} discrete actions, so the model "
                    f"must output logits of shape ({B}, {spec.num_actions}) (num_envs, A) "
                    f"for observations {obs.shape}; got {_describe(policy_output)}"
                )
        elif isinstance(head, GaussianPolicy):
            ok = _is_pair(policy_output) and tuple(policy_output[0].shape) == (B, spec.dim)
            if not ok:
                raise ValueError(
                    f"{self.env_name} has a continuous action space {spec.describe()}, so the "
                    f"model must output (mean, log_std) with mean of shape ({B}, {spec.dim}) "
                    f"for observations {obs.shape}; got {_describe(policy_output)}"
                )
        if actor_critic:
            # The bootstrap values come from one call on all T * B final observations.
            flat = jax.ShapeDtypeStruct((self.num_steps * B, *obs.shape[1:]), obs.dtype)
            try:
                flat_value = _split_output(
                    jax.eval_shape(lambda p, s, o: nnx.merge(graphdef, p, s)(o), params, model_state, flat),
                    True,
                )[1]
            except Exception as e:  # noqa: BLE001 - re-raised with the shapes that matter
                raise ValueError(
                    f"the model could not be applied to the {flat.shape} (num_steps * num_envs, *obs) "
                    f"final observations used for bootstrap values: {type(e).__name__}: {e}"
                ) from e
            if tuple(flat_value.shape) != (flat.shape[0],):
                raise ValueError(
                    f"the model's value output on {flat.shape} observations has shape "
                    f"{tuple(flat_value.shape)}; expected ({flat.shape[0]},)"
                )
        return _ModelInfo(actor_critic=bool(actor_critic), output=output)

    # -- collection --------------------------------------------------------------------

    def _step_for(self, graphdef: Any) -> _CompiledCollect:
        # Hashing a GraphDef costs ~100 us, so the shared table is only consulted when
        # the trainer hands over a different graphdef object than last time.
        if graphdef is not self._last_graphdef or self._last_step is None:
            collect = self._collect
            step = _shared((*self._settings, graphdef), lambda: _CompiledCollect(collect, graphdef))
            if step not in self._used:
                self._used.append(step)
            self._last_graphdef, self._last_step = graphdef, step
        return self._last_step

    @property
    def trace_count(self) -> int:
        """How many times the collection function this source uses was traced (compiled)."""
        return sum(step.traces for step in self._used)

    def next_batch(self) -> Batch:
        """Collect one batch with the trainer's current parameters."""
        graphdef, params, model_state = _model_state_of(self.policy_provider)
        step = self._step_for(graphdef)
        batch, self._carry, self._key = step.fn(params, model_state, self._carry, self._key)
        self.iterations += 1
        return batch

    # -- fused with the update (artifex_rl.device_source protocol) ------------------

    def device_batch_fn(self, graphdef: Any):
        """``fn(params, model_state, source_state) -> (batch, source_state)``: :meth:`next_batch`
        as a pure function, for ``fit`` to run with its update in one compiled call."""
        return self._step_for(graphdef).batch_fn

    @property
    def source_state(self) -> dict[str, Any]:
        """The device state threaded from batch to batch: ``{"carry", "key"}``."""
        return {"carry": self._carry, "key": self._key}

    @source_state.setter
    def source_state(self, state: dict[str, Any]) -> None:
        self._carry, self._key = state["carry"], state["key"]

    def advance(self, n: int) -> None:
        """Count ``n`` batches collected on the device by a fused call."""
        self.iterations += n

    @property
    def env_steps(self) -> int:
        """Environment steps taken so far (all envs), ``iterations * num_envs * num_steps``."""
        return self.iterations * self.num_envs * self.num_steps

    @property
    def steps_per_batch(self) -> int:
        return self.num_envs * self.num_steps

    def __iter__(self) -> Iterator[Batch]:
        if self.iterations_per_epoch is None:
            return self
        # Epochs are whole multiples of iterations_per_epoch of this source's own
        # counter, so an epoch cut short (max_steps, a checkpoint resume, which
        # restores the counter) continues with only its remaining batches.
        remaining = self.iterations_per_epoch - self.iterations % self.iterations_per_epoch
        return (self.next_batch() for _ in range(remaining))

    def __next__(self) -> Batch:
        return self.next_batch()

    def __len__(self) -> int:
        if self.iterations_per_epoch is None:
            raise TypeError("GymnaxRolloutSource is infinite; pass iterations_per_epoch to give it a length")
        return self.iterations_per_epoch

    # -- resume ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the exact same stream of batches.

        Returns nested dicts of arrays (device arrays are not pulled to the host):
        ``carry`` (observations, env state, running episode stats), ``key``
        (raw uint32 PRNG key) and ``iterations``.
        """
        carry = dict(self._carry)
        carry["env_state"] = serialization.to_state_dict(carry["env_state"])
        return {"carry": carry, "key": self._key, "iterations": np.asarray(self.iterations, np.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (arrays may be numpy or jax)."""
        missing = {"carry", "key", "iterations"} - set(state)
        if missing:
            raise ValueError(f"rollout state is missing {sorted(missing)}; expected carry, key, iterations")
        carry = dict(state["carry"])
        carry["env_state"] = serialization.from_state_dict(self._carry["env_state"], carry["env_state"])
        want = jax.tree.map(lambda x: (x.shape, x.dtype), self._carry)
        got_leaves = jax.tree.leaves(carry)
        want_leaves = jax.tree.leaves(self._carry)
        if jax.tree.structure(carry) != jax.tree.structure(self._carry) or any(
            np.shape(g) != w.shape for g, w in zip(got_leaves, want_leaves, strict=True)
        ):
            raise ValueError(
                "rollout state does not match this source "
                f"({self.env_name}, num_envs={self.num_envs}); expected carry {want}, "
                f"got {jax.tree.map(np.shape, carry)}"
            )
        self._carry = jax.tree.map(lambda g, w: jnp.asarray(g, w.dtype), carry, self._carry)
        key = jnp.asarray(state["key"], jnp.uint32)
        if key.shape != self._key.shape:
            raise ValueError(f"rollout key has shape {key.shape}; expected {self._key.shape}")
        self._key = key
        self._place_state()
        self.iterations = int(state["iterations"])


def _describe(x: Any) -> str:
    return str(jax.tree.map(lambda a: tuple(a.shape), x))
