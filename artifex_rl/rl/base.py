"""What the four RL trainers share: a policy head and an optional frozen reference."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl.batches import canonical
from artifex_rl.config import TrainerConfig
from artifex_rl.distributions import (
    CategoricalPolicy,
    GaussianPolicy,
    PolicyHead,
    TokenPolicy,
    get_policy_head,
)
from artifex_rl.events import Callback
from artifex_rl.rl.losses import masked_mean
from artifex_rl.trainer import Trainer

REFERENCE = "reference"


class RLTrainer(Trainer):
    """A :class:`Trainer` whose model is a policy read through a :class:`PolicyHead`.

    Args:
      model, optimizer, config, callbacks, mesh: as for :class:`Trainer`.
      policy: overrides ``config.policy``: a head name or a custom
        :class:`~artifex_rl.rl.policies.PolicyHead` (or a
        :class:`~artifex_rl.distributions.chain.TrajectoryPolicy`: a sampler's chain).
      reward_fn: rewards samples generated online (a chain policy's images;
        GRPO's completions).
    """

    #: Rollout sources report episode totals; the logged means are their ratios.
    ratio_metrics = {
        "episode_return": ("episode_return_sum", "episodes_finished"),
        "episode_length": ("episode_length_sum", "episodes_finished"),
    }

    def __init__(
        self,
        model: nnx.Module,
        optimizer: nnx.Optimizer | optax.GradientTransformation,
        config: TrainerConfig | None = None,
        *,
        policy: str | PolicyHead | None = None,
        reward_fn: Callable[..., jax.Array] | None = None,
        callbacks: Sequence[Callback] = (),
        mesh: jax.sharding.Mesh | None = None,
    ):
        super().__init__(model, optimizer, config, callbacks=callbacks, mesh=mesh)
        #: Rewards samples generated online (GRPO's completions, a chain policy's images).
        self.reward_fn = reward_fn
        chosen = policy if policy is not None else self.config.policy
        self.auto_policy = chosen == "auto"
        self.policy: PolicyHead | None = None if self.auto_policy else get_policy_head(chosen)
        self.is_token_policy = chosen == "tokens"
        self._vocab_size: int | None = getattr(model, "vocab_size", None) if not isinstance(model, Mapping) else None
        if not isinstance(self._vocab_size, int):
            self._vocab_size = None
        self._bound_cache: dict[tuple, int | None] = {}

    def resolve_policy(self, actions: Any = None, *, tokens: bool = False, output: Any = None) -> PolicyHead:
        """The policy head for this batch structure, decided at trace time (pure: nothing is stored).

        A fixed policy is returned as it is. With ``policy="auto"``:
        ``tokens=True`` forces the token head (online generation); a model
        ``output`` that is a pair ``(mean, log_std)`` is Gaussian and an array
        of logits categorical; otherwise the actions decide: integer ``(B, N)``
        (rank >= 2) actions are token sequences scored by a causal LM, integer
        ``(B,)`` actions categorical, float actions Gaussian.
        """
        if not self.auto_policy:
            return self.policy
        if tokens:
            name = "tokens"
        elif output is not None:
            name = "gaussian" if isinstance(output, (tuple, list)) else "categorical"
        elif jnp.issubdtype(jnp.result_type(actions), jnp.integer):
            name = "tokens" if jnp.ndim(actions) >= 2 else "categorical"
        else:
            name = "gaussian"
        return get_policy_head(name)

    @staticmethod
    def is_tokens(head: PolicyHead) -> bool:
        """Whether ``head`` scores token sequences with a causal LM."""
        return isinstance(head, TokenPolicy)

    def check_output_fits(self, head: PolicyHead, output: Any) -> None:
        """A model output the head cannot read is an error that names the head that would fit."""
        check_output_fits(head, output, type(self).__name__)

    @staticmethod
    def action_metrics(head: PolicyHead, logits: Any, actions: Any, mask: Any = None) -> dict[str, jax.Array]:
        """``{"invalid_action_frac"}`` for a categorical head, else ``{}`` (inside the step).

        The fraction of actions (real ones: ``mask > 0``) outside ``[0, num_actions)``
        with ``num_actions = logits.shape[-1]``. A host batch never gets here
        with one (:meth:`check_host_values` refuses it); a device batch is not
        read on the host, so this metric is how a bad one shows: its log-probs
        are NaN, and ``invalid_action_frac > 0`` says why. Like every
        ``compute_loss`` metric it is averaged over the step's minibatches: the
        batch's exact fraction with one minibatch, and > 0 whenever any real
        action is out of range.

        Args:
          logits: ``(..., A)``; actions: ``(...)`` integers; mask: ``(...)`` or ``None``.
        """
        if not isinstance(head, CategoricalPolicy):
            return {}
        actions = jnp.asarray(actions)
        bad = (actions < 0) | (actions >= jnp.shape(logits)[-1])
        return {"invalid_action_frac": masked_mean(bad.astype(jnp.float32), mask)}

    # ----------------------------------------------------- host-side values
    def train_step(self, batch, *args, **kwargs):
        self.check_host_values(batch)
        return super().train_step(batch, *args, **kwargs)

    def train_steps(self, batches):
        for batch in batches:
            self.check_host_values(batch)
        return super().train_steps(batches)

    def index_keys(self, batch: Mapping[str, Any]) -> list[tuple[str, str | None, str]]:
        """``(key, mask_key, kind)`` of the batch entries that index a distribution.

        ``kind`` is ``"action"`` (categorical actions, in ``[0, num_actions)``)
        or ``"token"`` (token ids, in ``[0, vocab)``); entries where
        ``batch[mask_key]`` is 0 are padding and not checked.
        """
        return []

    def check_host_values(self, batch: Any) -> None:
        """Cheap value checks of a host (numpy) batch before it reaches the device.

        Non-finite rewards at real steps, negative indices, categorical actions
        ``>= num_actions`` and token ids ``>= vocab`` (read from the model's
        ``vocab_size`` or, once per batch structure, from ``jax.eval_shape``
        of the model) are errors that name the key. Device arrays are never
        read here (that would wait for the device).
        """
        if not isinstance(batch, Mapping):
            return
        batch = canonical(dict(batch))
        if isinstance(batch.get("rewards"), np.ndarray) and np.issubdtype(batch["rewards"].dtype, np.number):
            self.check_host_rewards(batch)
        who = type(self).__name__
        for key, mask_key, kind in self.index_keys(batch):
            x = batch.get(key)
            if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.integer) or x.size == 0:
                continue
            mask = batch.get(mask_key) if mask_key else None
            real = np.asarray(mask) > 0 if isinstance(mask, np.ndarray) and mask.shape == x.shape[: mask.ndim] else None
            if real is not None and real.shape != x.shape:
                real = real.reshape(real.shape + (1,) * (x.ndim - real.ndim)) & np.ones(x.shape, bool)
            upper = self._index_bound(batch, key, kind)
            _check_index_range(who, key, x, upper, kind, real)

    def check_host_rewards(self, batch: Mapping[str, Any]) -> None:
        """Non-finite rewards at real steps are an error (GRPO overrides: it leaves them out)."""
        _check_finite_host_rewards(batch, type(self).__name__)

    def _index_bound(self, batch: Mapping[str, Any], key: str, kind: str) -> int | None:
        """``vocab`` or ``num_actions``: from the model's ``vocab_size``, else from its output shape."""
        if kind == "token" and self._vocab_size is not None:
            return self._vocab_size
        x = batch[key]
        if kind == "token":
            probe = np.zeros((1, 1), np.int32)
        else:
            obs = batch.get("observations")
            if not isinstance(obs, np.ndarray) or obs.ndim < x.ndim:
                return None
            probe = np.zeros((1, *obs.shape[x.ndim:]), obs.dtype)
        cache_key = (kind, probe.shape, str(probe.dtype))
        if cache_key not in self._bound_cache:
            self._bound_cache[cache_key] = self._output_last_dim(probe, kind)
        return self._bound_cache[cache_key]

    def _output_last_dim(self, probe: np.ndarray, kind: str) -> int | None:
        snap = self.policy_snapshot()

        def apply(params, state, x):
            return nnx.merge(snap.graphdef, params, state)(x)

        try:
            out = jax.eval_shape(apply, snap.params, snap.model_state, jax.ShapeDtypeStruct(probe.shape, probe.dtype))
        except Exception:  # noqa: BLE001 - the compiled step reports a model that rejects the input
            return None
        if kind == "action" and self.expects_value_output and isinstance(out, (tuple, list)) and len(out) == 2:
            out = out[0]
        if isinstance(out, (tuple, list)):
            return None  # a Gaussian (mean, log_std): no index range
        return int(out.shape[-1])

    #: PPO's model returns ``(policy_output, value)``.
    expects_value_output = False

    def set_reference_model(self, reference_model: nnx.Module | None) -> None:
        """Use ``reference_model`` (frozen) for KL penalties / DPO; ``None``: a frozen
        copy of the policy as it is now (the usual choice before fine-tuning)."""
        self.register_frozen_model(REFERENCE, reference_model if reference_model is not None else self.model)

    @property
    def has_reference_model(self) -> bool:
        return REFERENCE in self.frozen_states


def _check_finite_host_rewards(batch: Mapping[str, Any], who: str) -> None:
    """NaN/inf rewards at real (unmasked) steps of a host batch are an error.

    Only numpy rewards are checked: reading a device array would wait for the
    device. Padding (``mask`` 0) may hold anything.
    """
    rewards = batch["rewards"]
    bad = ~np.isfinite(rewards)
    mask = batch.get("mask")
    if isinstance(mask, np.ndarray) and mask.shape == rewards.shape:
        bad &= mask > 0
    if bad.any():
        where = np.argwhere(bad)[:5].tolist()
        raise ValueError(
            f"{who}: batch['rewards'] (shape {rewards.shape}) holds NaN or inf at positions {where}; "
            "rewards must be finite (mask padding with batch['mask'] = 0)"
        )


def _check_index_range(who: str, key: str, x: np.ndarray, upper: int | None, kind: str, real: np.ndarray | None) -> None:
    """Integer ``x`` must lie in ``[0, upper)`` where ``real`` (``None``: everywhere)."""
    bad = x < 0
    if upper is not None:
        bad = bad | (x >= upper)
    if real is not None:
        bad &= real
    if bad.any():
        where = np.argwhere(bad)[:5].tolist()
        values = x[bad][:5].tolist()
        what = "token ids" if kind == "token" else "categorical actions"
        bound = "vocab" if kind == "token" else "num_actions"
        limit = f"[0, {bound}={upper})" if upper is not None else ">= 0"
        raise ValueError(
            f"{who}: batch[{key!r}] holds {what} out of range: values {values} at positions {where}; "
            f"expected {limit} (read from the model's output)"
        )


def _describe_output(output: Any) -> str:
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)} with shapes {[jnp.shape(o) for o in output]}"
    return f"an array of shape {jnp.shape(output)}"


def check_output_fits(head: PolicyHead, output: Any, who: str) -> None:
    """Raise a TypeError that names the head that would fit when ``head`` cannot read ``output``."""
    pair = isinstance(output, (tuple, list))
    if isinstance(head, (CategoricalPolicy, TokenPolicy)) and pair:
        name = "tokens" if isinstance(head, TokenPolicy) else "categorical"
        raise TypeError(
            f"{who}: the model returned {_describe_output(output)}, but policy={name!r} reads logits "
            "(one array). For a Gaussian policy's (mean, log_std) use policy='gaussian' (or 'auto'); "
            "for an actor-critic's (policy_output, value) use PPOTrainer or a policy-only model"
        )
    if isinstance(head, GaussianPolicy) and not (pair and len(output) == 2):
        raise TypeError(
            f"{who}: the model returned {_describe_output(output)}, but policy='gaussian' reads a pair "
            "(mean, log_std). For logits use policy='categorical' (or 'auto')"
        )
