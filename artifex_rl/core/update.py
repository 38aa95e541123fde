"""The pure train step: ``make_step_fn(algorithm, slots, txs, config)``.

The step is built once from an :class:`Algorithm` (the trainer's hooks) and
is a pure function of its inputs, as big_vision and the Flax examples write
it::

    step(train_state, frozen_states, batch, static) -> (train_state, metrics, outputs)

Inside, in order:

1. ``before_update(extra, models, batch, rng)``: trainer-owned state read or
   written before the updates (an EBM's replay buffer hands out chain starts).
2. ``prepare_batch(models, batch, rng, frozen)``: whole-batch work without
   gradients (returns, advantages, reference log-probs, online generation).
3. ``schedule = (epochs, minibatches)``: gradient updates in a ``lax.scan``;
   each minibatch runs every :class:`UpdatePhase` in turn (a GAN: the
   discriminator ``n_critic`` times, then the generator); an optional
   ``continue_updates(metrics)`` stops the remaining updates (PPO's
   ``target_kl``) *before* applying the one that crossed it.
4. Each update: ``grad_accum_steps`` micro-batches whose loss terms are summed
   as ``(total, count)`` (:mod:`artifex_rl.core.loss_terms`), so token- or
   count-normalised losses are exact under accumulation; global-norm clipping;
   each trained model's own ``tx.update``.
5. ``after_update(extra, params, model_state)``: e.g. the parameters' EMA.

(Long because the five stages, the NaN policy around them and the mesh's
sharding constraints share one closure; splitting them would pass a dozen
closed-over values between modules.)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from artifex_rl.core import rng as rngs
from artifex_rl.core.loss_terms import LossTerm, as_terms, terms_value
from artifex_rl.core.state import SINGLE, ModelSlot

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class UpdatePhase:
    """One kind of gradient update in a minibatch's turn.

    Attributes:
      name: handed to ``compute_loss(..., phase=name)`` when a trainer has
        more than one phase; prefixes the phase's ``loss``/``grad_norm`` metrics.
      trains: names of the models whose parameters this phase updates.
      repeats: updates of this phase per minibatch (a WGAN critic's ``n_critic``).
    """

    name: str
    trains: tuple[str, ...]
    repeats: int = 1


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """The hooks a trainer contributes to its step (pure functions of their arguments).

    ``compute_loss(models, batch, rng[, phase=])`` gets one ``nnx.Module`` for a
    single-model trainer and ``{name: module}`` otherwise, and returns
    ``(loss, metrics)`` with ``loss`` a scalar, a :class:`LossTerm` or a tuple of them.
    """

    compute_loss: Callable[..., tuple[Any, Mapping[str, Array]]]
    prepare_batch: Callable[..., dict[str, Any]]
    schedule: tuple[int, int] = (1, 1)
    phases: tuple[UpdatePhase, ...] = ()
    continue_updates: Callable[[Mapping[str, Array]], Array | None] | None = None
    before_update: Callable[..., tuple[Any, dict[str, Any]]] | None = None
    after_update: Callable[..., Any] | None = None
    name: str = "Trainer"


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The loop settings the step needs (a subset of ``TrainerConfig``)."""

    grad_accum_steps: int = 1
    max_grad_norm: float | None = None
    log_grad_norm: bool = False
    scan_unroll: int | bool = 1
    check_finite: bool = True
    #: On a mesh: pins a batch split into ``(parts, n, ...)`` micro- or minibatches
    #: so every part stays spread over the data axis (``MeshPlacement.constrain_split``).
    constrain_split: Callable[[Any], Any] | None = None


def leading_dims(tree: Any) -> dict[str, int | None]:
    dims = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = jnp.shape(leaf)
        dims[jax.tree_util.keystr(path)] = shape[0] if shape else None
    return dims


def split_leading(tree: Any, parts: int, what: str) -> Any:
    """Reshape every leaf ``(N, ...)`` to ``(parts, N // parts, ...)``."""
    dims = leading_dims(tree)
    sizes = set(dims.values())
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"splitting the batch into {parts} {what} needs every entry to share its "
            f"leading (sample) axis; got leading sizes {dims}"
        )
    (n,) = sizes
    if n % parts:
        raise ValueError(
            f"cannot split {n} samples into {parts} equal {what}: {n} % {parts} != 0 (entries: {dims})"
        )
    return jax.tree.map(lambda x: x.reshape(parts, n // parts, *x.shape[1:]), tree)


def global_norm(tree: Any) -> Array:
    """L2 norm of all leaves (float32 accumulation)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def _weighted_mean(metrics: Any, weights: Array) -> Any:
    """Mean over the leading axes weighted by ``weights`` (same leading shape); plain mean if all 0."""
    total = jnp.sum(weights)

    def one(x):
        w = weights.reshape(weights.shape + (1,) * (x.ndim - weights.ndim)).astype(jnp.float32)
        axes = tuple(range(weights.ndim))
        weighted = jnp.sum(jnp.where(w > 0, x, 0) * w, axis=axes) / jnp.maximum(total, 1.0)
        return jnp.where(total > 0, weighted, jnp.mean(x, axis=axes)).astype(x.dtype)

    return jax.tree.map(one, metrics)


def _all_finite(tree: Any) -> Array:
    """Whether every float leaf is finite: the sum of all entries is finite iff no NaN/inf is in it
    (short of a float overflow of the sum itself, which no trainable state reaches)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    if not leaves:
        return jnp.array(True)
    return jnp.isfinite(sum(jnp.sum(x.astype(jnp.float32)) for x in leaves))


def _select(keep_new: Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def make_step_fn(
    algorithm: Algorithm,
    slots: Mapping[str, ModelSlot],
    txs: Mapping[str, optax.GradientTransformation],
    config: StepConfig,
    frozen_graphdefs: Mapping[str, nnx.GraphDef],
) -> Callable[..., tuple[dict, dict, dict]]:
    """Build the pure step (see the module docstring). ``frozen_graphdefs`` is read at trace time."""
    names = list(slots)
    single = names == [SINGLE]
    phases = algorithm.phases or (UpdatePhase("train", tuple(names)),)
    multi_phase = len(phases) > 1
    for phase in phases:
        unknown = [n for n in phase.trains if n not in slots]
        if unknown or not phase.trains:
            raise ValueError(f"update phase {phase.name!r} trains {list(phase.trains)}; models are {names}")
    unroll = config.scan_unroll

    def merge(params: Mapping, model_state: Mapping) -> dict[str, nnx.Module]:
        return {n: nnx.merge(slots[n].graphdef, params[n], model_state[n]) for n in names}

    def model_arg(models: Mapping[str, nnx.Module]) -> Any:
        return models[SINGLE] if single else dict(models)

    def rest_of(models: Mapping[str, nnx.Module]) -> dict:
        return {n: nnx.to_pure_dict(nnx.split(models[n], slots[n].wrt, ...)[2]) for n in names}

    # ---------------------------------------------------------------- #
    def terms_of(phase: UpdatePhase, trained: Mapping, params: Mapping, model_state: Mapping, batch, key):
        models = merge({**params, **trained}, model_state)
        kwargs = {"phase": phase.name} if multi_phase else {}
        loss, metrics = algorithm.compute_loss(model_arg(models), batch, key, **kwargs)
        terms = as_terms(loss)
        for t in terms:
            if jnp.shape(t.total) != () or jnp.shape(t.count) != ():
                raise ValueError(
                    f"{algorithm.name}.compute_loss must return a scalar loss, got shape "
                    f"{jnp.shape(t.total)} (or LossTerms of scalars; count shape {jnp.shape(t.count)})"
                )
        return terms, dict(metrics), rest_of(models)

    def loss_and_grads(phase, params, model_state, batch, key):
        trained = {n: params[n] for n in phase.trains}
        k = config.grad_accum_steps
        if k == 1:

            def value(trained):
                terms, metrics, new_state = terms_of(phase, trained, params, model_state, batch, key)
                return terms_value(terms), (metrics, new_state)

            (loss, (metrics, model_state)), grads = jax.value_and_grad(value, has_aux=True)(trained)
            return loss, grads, model_state, metrics

        micro = split_leading(batch, k, "micro-batches (grad_accum_steps)")
        if config.constrain_split is not None:
            micro = config.constrain_split(micro)

        def totals(trained, mb, mkey, model_state):
            terms, metrics, new_state = terms_of(phase, trained, params, model_state, mb, mkey)
            counts = jnp.stack([jnp.asarray(t.count, jnp.float32) for t in terms])
            return jnp.stack([t.total for t in terms]), (counts, metrics, new_state)

        def accumulate(carry, xs):
            acc, model_state = carry
            mb, index = xs
            mkey = rngs.sub(key, index)  # dropped by XLA when unused
            tot, vjp_fn, (counts, metrics, model_state) = jax.vjp(
                functools.partial(totals, mb=mb, mkey=mkey, model_state=model_state), trained, has_aux=True
            )
            # One backward pass per term, each on the same forward pass: the
            # terms are divided by their whole-batch counts only at the end.
            grads = [vjp_fn(jnp.zeros_like(tot).at[i].set(1.0))[0] for i in range(tot.shape[0])]
            new = (acc[0] + tot, acc[1] + counts, jax.tree.map(jnp.add, acc[2], grads))
            return (new, model_state), metrics

        # Trace once abstractly for the number of terms.
        n_terms = jax.eval_shape(
            lambda: totals(trained, jax.tree.map(lambda x: x[0], micro), key, model_state)[0]
        ).shape[0]
        zeros = jax.tree.map(jnp.zeros_like, trained)
        init = (jnp.zeros(n_terms), jnp.zeros(n_terms), [zeros] * n_terms)
        ((tot, counts, grad_terms), model_state), metrics = jax.lax.scan(
            accumulate, (init, model_state), (micro, jnp.arange(k)), unroll=unroll
        )
        scale = 1.0 / jnp.maximum(counts, 1.0)
        grads = jax.tree.map(lambda *g: sum(gi * scale[i] for i, gi in enumerate(g)), *grad_terms)
        loss = jnp.sum(tot * scale)
        return loss, grads, model_state, jax.tree.map(lambda x: jnp.mean(x, axis=0), metrics)

    epochs, minibatches = algorithm.schedule
    # One update per step: its finiteness is decided before it is applied, and
    # the skip fuses into the optimizer's elementwise update (optax.apply_if_finite's
    # way). With several updates per step, the whole step is undone at its end.
    single_update = (epochs, minibatches) == (1, 1) and len(phases) == 1 and phases[0].repeats == 1
    gate_in_update = config.check_finite and single_update

    def gradient_update(phase, params, model_state, opt_state, batch, key):
        old_model_state = model_state
        loss, grads, model_state, metrics = loss_and_grads(phase, params, model_state, batch, key)
        prefix = f"{phase.name}_" if multi_phase else ""
        metrics = {**metrics, f"{prefix}loss": loss}
        if config.max_grad_norm is not None or config.log_grad_norm:
            norm = global_norm(grads)
            metrics[f"{prefix}grad_norm"] = norm
        if config.max_grad_norm is not None:
            # Stateless clip before tx, so the optimizer state keeps the
            # structure of the user's own transformation.
            clip = jnp.minimum(1.0, config.max_grad_norm / (norm + 1e-12))
            grads = jax.tree.map(lambda g: g * clip, grads)
        params, opt_state = dict(params), dict(opt_state)

        def apply(params, opt_state, grads):
            params, opt_state = dict(params), dict(opt_state)
            for n in phase.trains:
                updates, opt_state[n] = txs[n].update(grads[n], opt_state[n], params[n])
                params[n] = optax.apply_updates(params[n], updates)
            return params, opt_state

        if gate_in_update:
            # The update runs inside the taken branch of one conditional, so a
            # finite step writes its results straight into the outputs.
            finite = _all_finite((grads, {k: v for k, v in metrics.items() if "loss" in k}))
            metrics["skipped_step"] = 1.0 - finite.astype(jnp.float32)
            params, opt_state, model_state = jax.lax.cond(
                finite,
                lambda p, o, g, ms, _: (*apply(p, o, g), ms),
                lambda p, o, g, _, old_ms: (p, o, old_ms),
                params, opt_state, grads, model_state, old_model_state,
            )
        else:
            params, opt_state = apply(params, opt_state, grads)
        return params, model_state, opt_state, metrics

    def minibatch_updates(params, model_state, opt_state, batch, key):
        """Every phase in turn on one minibatch; metrics of repeats are averaged."""
        metrics: dict[str, Array] = {}
        for p_index, phase in enumerate(phases):
            repeats = []
            for r in range(phase.repeats):
                pkey = rngs.sub(key, p_index * 4096 + r)
                params, model_state, opt_state, m = gradient_update(
                    phase, params, model_state, opt_state, batch, pkey
                )
                repeats.append(m)
            metrics.update(jax.tree.map(lambda *xs: sum(xs) / len(xs), *repeats))
        return params, model_state, opt_state, metrics

    def run_updates(params, model_state, opt_state, batch, key):
        if epochs == 1 and minibatches == 1:
            # No scan of length 1 (a rolled scan slows conv gradients on XLA:CPU);
            # a stop rule has nothing to stop before the first update.
            return minibatch_updates(params, model_state, opt_state, batch, key)
        stop_rule_used: list[bool] = []

        def one_update(carry, xs, epoch_key):
            params, model_state, opt_state, active = carry
            minibatch, index = xs
            new_params, new_ms, new_opt, metrics = minibatch_updates(
                params, model_state, opt_state, minibatch, rngs.sub(epoch_key, index)
            )
            go_on = algorithm.continue_updates(metrics) if algorithm.continue_updates else None
            if go_on is None:  # no stop rule: every update applies, nothing to select
                return (new_params, new_ms, new_opt, active), (metrics, active)
            stop_rule_used.append(True)
            applied = active & go_on
            # An update whose metrics cross the stop rule is not applied (Spinning Up's
            # early stop); neither are the ones after it.
            keep = jax.tree.map(
                lambda n, o: jnp.where(applied, n, o),
                (new_params, new_ms, new_opt),
                (params, model_state, opt_state),
            )
            return (*keep, applied), (metrics, applied)

        def one_epoch(carry, epoch):
            epoch_key = rngs.sub(key, epoch)
            if minibatches > 1:
                n = next(iter(leading_dims(batch).values()))
                perm = jax.random.permutation(rngs.sub(epoch_key, 1 << 20), n)
                shuffled = jax.tree.map(lambda x: x[perm], batch)
            else:
                shuffled = batch
            split = split_leading(shuffled, minibatches, "minibatches")
            if config.constrain_split is not None:
                split = config.constrain_split(split)
            return jax.lax.scan(
                functools.partial(one_update, epoch_key=epoch_key),
                carry,
                (split, jnp.arange(minibatches)),
                unroll=unroll,
            )

        carry = (params, model_state, opt_state, jnp.array(True))
        carry, (metrics, applied) = jax.lax.scan(one_epoch, carry, jnp.arange(epochs), unroll=unroll)
        params, model_state, opt_state, _ = carry
        metrics = _weighted_mean(metrics, applied.astype(jnp.float32))
        if stop_rule_used:
            metrics["num_updates"] = jnp.sum(applied).astype(jnp.float32)
        return params, model_state, opt_state, metrics

    # ---------------------------------------------------------------- #
    def step(state, frozen_states, batch, static):
        batch = {**batch, **dict(static)}
        passthrough = batch.pop("metrics", {})
        step_key = rngs.stream_key(state["rng"], rngs.STEP, state["step"])
        models = merge(state["params"], state["model_state"])
        frozen = {n: nnx.merge(frozen_graphdefs[n], st) for n, st in frozen_states.items()}
        extra = state["extra"]
        model_state = state["model_state"]
        if algorithm.before_update is not None:
            extra, batch = algorithm.before_update(
                extra, model_arg(models), batch, rngs.sub(step_key, rngs.EXTRA)
            )
            batch = dict(batch)
        prepared = dict(
            algorithm.prepare_batch(model_arg(models), batch, rngs.sub(step_key, rngs.PREPARE), frozen)
        )
        prepared_metrics = prepared.pop("metrics", {})
        outputs = prepared.pop("outputs", {})
        params, model_state, opt_state, metrics = run_updates(
            state["params"], model_state, state["opt_state"], prepared, rngs.sub(step_key, rngs.UPDATE)
        )
        if algorithm.after_update is not None:
            extra = algorithm.after_update(extra, params, model_state)
        if gate_in_update:
            if jax.tree.leaves(extra):  # e.g. an EMA must not move on a skipped step
                extra = _select(metrics["skipped_step"] == 0, extra, state["extra"])
        elif config.check_finite:
            # Several updates per step: a non-finite loss or new parameters anywhere
            # undoes the whole step (every optimizer, every minibatch).
            finite = _all_finite((params, {k: v for k, v in metrics.items() if "loss" in k}))
            new = (params, model_state, opt_state, extra)
            old = (state["params"], state["model_state"], state["opt_state"], state["extra"])
            params, model_state, opt_state, extra = jax.lax.cond(finite, lambda: new, lambda: old)
            metrics = {**metrics, "skipped_step": 1.0 - finite.astype(jnp.float32)}
        new_state = {
            "params": params,
            "model_state": model_state,
            "opt_state": opt_state,
            "extra": extra,
            "rng": state["rng"],
            "step": state["step"] + 1,
        }
        return new_state, {**metrics, **prepared_metrics, **passthrough}, outputs

    return step


__all__ = ["Algorithm", "LossTerm", "StepConfig", "UpdatePhase", "global_norm", "make_step_fn", "split_leading"]
