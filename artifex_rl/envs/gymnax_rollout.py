"""The rollout source ``Trainer.fit`` pulls batches from: :class:`GymnaxRolloutSource`.

Each ``next()`` runs one jitted :func:`~artifex_rl.envs.collect.make_collect`
call with the trainer's current parameters (or, fused by ``fit``, the same
collection inside the trainer's compiled call), keeps the environments' carry
and PRNG key on the device between calls, checks a model against the
environment before anything is compiled, and saves and restores its stream
for exact resumption. Sources with equal settings share compiled functions.

Long because the model checks, with the error messages that name the
shapes, and the resume code belong to the source (a little over 400 lines);
the pure rollout is in :mod:`artifex_rl.envs.collect`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

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
from artifex_rl.envs.collect import (
    Batch,
    Carry,
    CollectFn,
    detect_actor_critic,
    init_carry,
    is_pair,
    make_collect,
    make_env,
    split_output,
)
from artifex_rl.envs.spaces import action_spec

Array = jax.Array


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
        policy_output, value = split_output(output, actor_critic)
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
            ok = is_pair(policy_output) and tuple(policy_output[0].shape) == (B, spec.dim)
            if not ok:
                raise ValueError(
                    f"{self.env_name} has a continuous action space {spec.describe()}, so the "
                    f"model must output (mean, log_std) with mean of shape ({B}, {spec.dim}) "
                    f"for observations {obs.shape}; got {_describe(policy_output)}"
                )
        if actor_critic:
            # The bootstrap values come from one call on the truncated steps' final
            # observations: all T * B of them when the env truncates more than its params say.
            flat = jax.ShapeDtypeStruct((self.num_steps * B, *obs.shape[1:]), obs.dtype)
            try:
                flat_value = split_output(
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
