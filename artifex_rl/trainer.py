"""The :class:`Trainer`: state, the compiled step, and the ``fit`` loop.

Design in one paragraph. The trainer splits the user's ``nnx.Module`` once
into a static ``graphdef`` and plain-dict pytrees (parameters, other model
variables), and keeps those together with the optax state, an RNG key and a
step counter in ``trainer.train_state``. ``train_step`` is one ``jax.jit``-ed
pure function of that state and a batch; the state is donated, so its buffers
are updated in place. Inside the step the model is rebuilt with
``nnx.merge`` (trace-time only) and handed to :meth:`Trainer.compute_loss`, the
one method a new algorithm overrides. After each step the new arrays are
written back into the user's model object (0.15 us per Variable), so ``trainer.model`` -- and the user's own reference to it --
is always current and never holds a donated buffer. Metrics stay on the device
until ``fit`` pulls them every ``log_every_n_steps``.

Inside one compiled step, in order:

1. ``prepare_batch(model, batch, rng, frozen)`` -- whole-batch work without
   gradients (returns, GAE, group advantages, reference log-probs).
2. ``update_schedule()`` epochs x minibatches of gradient updates (default
   1 x 1; PPO uses 4 x 4), each minibatch split into ``grad_accum_steps``
   micro-batches whose gradients are averaged, clipped to ``max_grad_norm`` and
   applied with the optax transformation.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl.config import TrainerConfig
from artifex_rl.device_source import DeviceBatchSource, is_device_batch_source
from artifex_rl.events import Callback, CallbackList

Array = jax.Array
Batch = Mapping[str, Any]
Metrics = dict[str, Array]

# Salt of the per-epoch shuffle key; minibatch keys fold in their index 0..M-1.
_SHUFFLE_SALT = 0x5F3759DF

# Exact types checked first: isinstance against the jax.Array ABC costs ~1 us.
_ARRAY_TYPES = frozenset({type(jnp.zeros(())), np.ndarray})

# Batch entries of these Python types are compile-time constants of the step
# (e.g. the seeds' ``"group_size": 4``); a new value compiles a new step.
_STATIC_TYPES = (bool, int, float, str, type(None))


def _pure(state: nnx.State) -> dict:
    return nnx.to_pure_dict(state)


def _set_variable(var: nnx.Variable, value: Array) -> None:
    # Variable.set_raw_value runs a trace-level check through __setattr__
    # (3.2 us per Variable, 0.5 ms per step for a 150-Variable transformer).
    # The sync always runs on the host, outside any trace, where that check
    # cannot fail, so assign the attribute directly (0.15 us).
    object.__setattr__(var, "_raw_value", value)


def _variables_in_leaf_order(module: nnx.Module, pure: dict) -> list[nnx.Variable]:
    """The module's Variables, aligned with ``jax.tree.leaves(pure)``."""
    by_path = {
        tuple(path): node for path, node in nnx.iter_graph(module) if isinstance(node, nnx.Variable)
    }
    paths, _ = jax.tree_util.tree_flatten_with_path(pure)
    return [by_path[tuple(k.key for k in path)] for path, _ in paths]


def _leading_dims(tree: Any) -> dict[str, int | None]:
    dims = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = jnp.shape(leaf)
        dims[jax.tree_util.keystr(path)] = shape[0] if shape else None
    return dims


def _split_leading(tree: Any, parts: int, what: str) -> Any:
    """Reshape every leaf ``(N, ...)`` to ``(parts, N // parts, ...)``."""
    dims = _leading_dims(tree)
    sizes = set(dims.values())
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"splitting the batch into {parts} {what} needs every entry to share its "
            f"leading (sample) axis; got leading sizes {dims}"
        )
    (n,) = sizes
    if n % parts:
        raise ValueError(
            f"cannot split {n} samples into {parts} equal {what}: {n} % {parts} != 0 "
            f"(entries: {dims})"
        )
    return jax.tree.map(lambda x: x.reshape(parts, n // parts, *x.shape[1:]), tree)


def _global_norm(tree: Any) -> Array:
    """L2 norm of all leaves as one reduction.

    ``optax.tree.norm`` reduces each leaf separately; on XLA:CPU that measured
    +120 us on an 88 us MLP step, this form +13 us.
    """
    leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(jnp.sum(jnp.square(jnp.concatenate(leaves))))


@jax.jit
def _interval_mean(buffer: list[dict[str, Array]]) -> dict[str, Array]:
    """Mean of each metric over a logging interval's steps (keys of the last entry).

    An entry holds one step's scalars or a fused call's ``(K,)`` metrics;
    metrics restored from a checkpoint's pending interval arrive as floats.
    """
    keys = buffer[-1].keys()
    return {
        k: jnp.mean(jnp.concatenate([jnp.ravel(jnp.asarray(m[k], jnp.float32)) for m in buffer if k in m]))
        for k in keys
    }


class _StepView(Mapping):
    """Step ``i`` of fused ``(K,)`` metrics, sliced only when a callback reads it."""

    def __init__(self, stacked: Mapping[str, Array], index: int):
        self._stacked, self._index = stacked, index

    def __getitem__(self, key: str) -> Array:
        return self._stacked[key][self._index]

    def __iter__(self):
        return iter(self._stacked)

    def __len__(self) -> int:
        return len(self._stacked)


def _mean_over_leading(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)


class Trainer:
    """A compiled training loop around an ``nnx.Module``.

    Subclass it and override :meth:`compute_loss` to implement an algorithm.

    Args:
      model: the model to train (an ``nnx.Module``).
      optimizer: an ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` or a bare
        ``optax.GradientTransformation``. The trainer owns the optimizer
        state from here on; ``trainer.optimizer`` gives back the
        ``nnx.Optimizer`` brought up to date.
      config: a :class:`TrainerConfig` (or the subclass's config class);
        defaults to ``self.config_class()``.
      callbacks: callbacks used by every ``fit`` call (more can be passed to
        ``fit``).

    Attributes:
      model: the model, current after every step.
      config: the config.
      train_state: ``{"params", "model_state", "opt_state", "rng", "step"}``,
        plain pytrees of device arrays; what a checkpoint saves.
      graphdef: the model's static structure (rebuild with
        ``nnx.merge(graphdef, params, model_state)``).
      global_step: number of ``train_step`` calls so far (a host int).
      current_epoch: number of completed passes over the dataloader.
      callback_metrics: the latest host metrics averaged over the last
        logging interval (what ``on_log`` received; with lagged logging, see
        ``Callback.log_may_lag``, it is updated just after the next step is queued).
      should_stop: set to ``True`` (e.g. by a callback) to end ``fit`` after
        the current step.
      trace_count: how many times the step has been traced (compiled).
      last_outputs: device arrays the last step chose to keep (what
        ``prepare_batch`` put under ``"outputs"``, e.g. generated samples).
    """

    config_class: type[TrainerConfig] = TrainerConfig
    #: Logged metrics defined as a ratio of two interval totals:
    #: ``{name: (total_key, count_key)}``, e.g. mean return of the episodes
    #: finished in the interval. Omitted when the count is 0.
    ratio_metrics: dict[str, tuple[str, str]] = {}

    def __init__(
        self,
        model: nnx.Module,
        optimizer: nnx.Optimizer | optax.GradientTransformation,
        config: TrainerConfig | None = None,
        *,
        callbacks: Sequence[Callback] = (),
    ):
        if not isinstance(model, nnx.Module):
            raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} expects a {self.config_class.__name__} config, "
                f"got {type(config).__name__}"
            )
        self.config = config
        self._model = model
        self.graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
        params, model_state = _pure(params), _pure(model_state)
        self._param_vars = _variables_in_leaf_order(model, params)
        self._state_vars = _variables_in_leaf_order(model, model_state)

        self._nnx_optimizer, self.tx, opt_state = self._resolve_optimizer(optimizer, params)
        self.train_state: dict[str, Any] = {
            "params": params,
            "model_state": model_state,
            "opt_state": opt_state,
            "rng": jax.random.PRNGKey(config.seed),
            "step": jnp.zeros((), jnp.int32),
        }
        # Frozen models (e.g. a reference policy): passed to the step as an
        # argument, never donated, never differentiated.
        self._frozen_graphdefs: dict[str, nnx.GraphDef] = {}
        self._frozen_states: dict[str, Any] = {}

        self.callbacks = CallbackList(callbacks)
        self._trainer_callbacks = list(callbacks)
        self.global_step = 0
        self.current_epoch = 0
        self.batches_seen_in_epoch = 0
        self.callback_metrics: dict[str, float] = {}
        self.should_stop = False
        self.fitting = False
        self.dataloader: Iterable[Batch] | None = None
        self.trace_count = 0
        self.last_outputs: dict[str, Array] = {}
        self._metric_buffer: list[Metrics] = []
        # A logging interval's device means and its step, pulled once the next
        # step is queued (when every callback allows on_log to lag).
        self._pending_log: tuple[dict[str, Array], int] | None = None
        self._lag_logs = False
        self._step_fn = jax.jit(self._step, donate_argnums=(0,), static_argnums=(3,))
        self._fused_step_fn = jax.jit(self._fused_steps, donate_argnums=(0,), static_argnums=(3,))
        # The source state is not donated: a source's state_dict() hands out those arrays.
        self._source_step_fn = jax.jit(self._source_steps, donate_argnums=(0,), static_argnums=(4, 5))

    # ------------------------------------------------------------------ #
    # The algorithm's extension points
    # ------------------------------------------------------------------ #
    def compute_loss(
        self, model: nnx.Module, batch: Mapping[str, Array], rng: Array
    ) -> tuple[Array, Mapping[str, Array]]:
        """Return ``(scalar loss, metrics)`` for one (mini)batch; runs under ``jit`` and ``grad``.

        Args:
          model: the model rebuilt from the current parameters.
          batch: the (mini)batch as returned by :meth:`prepare_batch`.
          rng: a fresh PRNG key for this update.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must override compute_loss(model, batch, rng) -> (loss, metrics)"
        )

    def prepare_batch(
        self,
        model: nnx.Module,
        batch: dict[str, Any],
        rng: Array,
        frozen: Mapping[str, nnx.Module],
    ) -> dict[str, Any]:
        """Whole-batch work before the updates, inside the compiled step (no gradient).

        Override to compute returns, advantages or reference log-probs. When
        the update schedule splits the batch (minibatches, accumulation),
        every entry of the returned dict must share its leading sample axis,
        except ``"metrics"`` (a dict of scalars reported with the step's
        metrics) and ``"outputs"`` (arrays kept in ``trainer.last_outputs``).

        Args:
          model: the model with the parameters *before* this step's updates.
          batch: the batch as given to ``train_step`` (static entries included).
          rng: a PRNG key for this step's preparation.
          frozen: frozen models registered with :meth:`register_frozen_model`.
        """
        return batch

    def update_schedule(self) -> tuple[int, int]:
        """``(epochs, minibatches)`` of gradient updates per batch; default ``(1, 1)``."""
        return 1, 1

    def continue_updates(self, metrics: Mapping[str, Array]) -> Array | None:
        """Return a boolean array to stop the remaining updates of this batch (e.g. PPO's
        ``target_kl``), or ``None`` (the default) to always run all of them."""
        return None

    def register_frozen_model(self, name: str, module: nnx.Module) -> None:
        """Make ``module`` available to :meth:`prepare_batch` as ``frozen[name]``.

        Its current state is copied; later changes to ``module`` are not seen.
        """
        graphdef, state = nnx.split(module)
        self._frozen_graphdefs[name] = graphdef
        self._frozen_states[name] = jax.tree.map(jnp.array, _pure(state))

    # ------------------------------------------------------------------ #
    # The compiled step
    # ------------------------------------------------------------------ #
    def train_step(self, batch: Batch) -> Metrics:
        """Run one compiled optimisation step on ``batch`` and return its metrics.

        The metrics are device scalars (no host sync): always ``loss``, plus
        ``grad_norm`` (with clipping or ``log_grad_norm``), whatever
        ``compute_loss`` and ``prepare_batch`` reported and the batch's own
        ``"metrics"`` entry. ``trainer.model`` holds the new parameters
        when this returns.
        """
        arrays, static = self._split_batch(batch)
        self.train_state, metrics, self.last_outputs = self._step_fn(
            self.train_state, self._frozen_states, arrays, static
        )
        self.global_step += 1
        self._sync_model()
        return metrics

    def _step(self, state, frozen_states, batch, static) -> tuple[dict, Metrics, dict]:
        self.trace_count += 1
        batch = {**batch, **dict(static)}
        passthrough = batch.pop("metrics", {})
        # The stream is a function of (seed key, step): exactly resumable, and
        # XLA drops the key derivation when no one uses it (a split on XLA:CPU
        # costs ~70 us, as much as a small model's whole step).
        step_key = jax.random.fold_in(state["rng"], state["step"])
        prep_rng, update_rng = jax.random.fold_in(step_key, 0), jax.random.fold_in(step_key, 1)
        model = nnx.merge(self.graphdef, state["params"], state["model_state"])
        frozen = {
            name: nnx.merge(self._frozen_graphdefs[name], st) for name, st in frozen_states.items()
        }
        prepared = dict(self.prepare_batch(model, batch, prep_rng, frozen))
        # prepare_batch may report whole-batch metrics (mean reward, ...) under
        # "metrics", and arrays worth keeping (e.g. generated samples) under "outputs".
        prepared_metrics = prepared.pop("metrics", {})
        outputs = prepared.pop("outputs", {})
        params, model_state, opt_state, metrics = self._run_updates(
            state["params"], state["model_state"], state["opt_state"], prepared, update_rng
        )
        metrics = {**metrics, **prepared_metrics, **passthrough}
        new_state = {
            "params": params,
            "model_state": model_state,
            "opt_state": opt_state,
            "rng": state["rng"],
            "step": state["step"] + 1,
        }
        return new_state, metrics, outputs

    def _run_updates(self, params, model_state, opt_state, batch, rng):
        epochs, minibatches = self.update_schedule()
        if epochs == 1 and minibatches == 1:
            return self._gradient_update(params, model_state, opt_state, batch, rng)

        def one_update(carry, xs, epoch_key):
            params, model_state, opt_state, active = carry
            minibatch, index = xs
            # Derived where it is used, so XLA drops it when compute_loss
            # ignores its rng (threefry calls cost tens of us on XLA:CPU).
            key = jax.random.fold_in(epoch_key, index)
            new = self._gradient_update(params, model_state, opt_state, minibatch, key)
            *new_carry, metrics = new
            go_on = self.continue_updates(metrics)
            if go_on is not None:
                # Once stopped, keep the old state for the remaining updates.
                new_carry = jax.tree.map(
                    lambda n, o: jnp.where(active, n, o), tuple(new_carry), (params, model_state, opt_state)
                )
                active = active & go_on
            return (*new_carry, active), metrics

        def one_epoch(carry, epoch):
            epoch_key = jax.random.fold_in(rng, epoch)
            if minibatches > 1:
                n = next(iter(_leading_dims(batch).values()))
                perm = jax.random.permutation(jax.random.fold_in(epoch_key, _SHUFFLE_SALT), n) if n is not None else None
                shuffled = jax.tree.map(lambda x: x[perm], batch) if perm is not None else batch
            else:
                shuffled = batch
            split = _split_leading(shuffled, minibatches, "minibatches")
            update = functools.partial(one_update, epoch_key=epoch_key)
            return jax.lax.scan(update, carry, (split, jnp.arange(minibatches)))

        carry = (params, model_state, opt_state, jnp.array(True))
        carry, metrics = jax.lax.scan(one_epoch, carry, jnp.arange(epochs))
        params, model_state, opt_state, _ = carry
        metrics = jax.tree.map(lambda x: jnp.mean(x, axis=(0, 1)), metrics)
        return params, model_state, opt_state, metrics

    def _loss_and_grads(self, params, model_state, batch, rng):
        def loss_fn(params):
            model = nnx.merge(self.graphdef, params, model_state)
            loss, metrics = self.compute_loss(model, batch, rng)
            loss = jnp.asarray(loss)
            if loss.shape != ():
                raise ValueError(
                    f"{type(self).__name__}.compute_loss must return a scalar loss, "
                    f"got shape {loss.shape}"
                )
            new_model_state = _pure(nnx.split(model, nnx.Param, ...)[2])
            return loss, (dict(metrics), new_model_state)

        (loss, (metrics, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, new_model_state, {"loss": loss, **metrics}

    def _gradient_update(self, params, model_state, opt_state, batch, rng):
        k = self.config.grad_accum_steps
        if k == 1:
            grads, model_state, metrics = self._loss_and_grads(params, model_state, batch, rng)
        else:
            micro = _split_leading(batch, k, "micro-batches (grad_accum_steps)")

            def accumulate(carry, xs):
                grad_sum, model_state = carry
                micro_batch, index = xs
                key = jax.random.fold_in(rng, index)  # dropped by XLA when unused
                grads, model_state, metrics = self._loss_and_grads(params, model_state, micro_batch, key)
                return (jax.tree.map(jnp.add, grad_sum, grads), model_state), metrics

            zeros = jax.tree.map(jnp.zeros_like, params)
            (grad_sum, model_state), metrics = jax.lax.scan(
                accumulate, (zeros, model_state), (micro, jnp.arange(k))
            )
            # Mean of per-micro-batch mean gradients == gradient of the mean
            # over the whole batch when the micro-batches have equal size.
            grads = jax.tree.map(lambda g: g / k, grad_sum)
            metrics = _mean_over_leading(metrics)

        cfg = self.config
        if cfg.max_grad_norm is not None or cfg.log_grad_norm:
            grad_norm = _global_norm(grads)
            metrics = {**metrics, "grad_norm": grad_norm}
        if cfg.max_grad_norm is not None:
            # Stateless clip applied before tx, so the optimizer state keeps
            # the structure of the user's own transformation.
            scale = jnp.minimum(1.0, cfg.max_grad_norm / (grad_norm + 1e-12))
            grads = jax.tree.map(lambda g: g * scale, grads)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, model_state, opt_state, metrics

    # ------------------------------------------------------------------ #
    # The loop
    # ------------------------------------------------------------------ #
    def fit(
        self,
        dataloader: Iterable[Batch],
        *,
        max_steps: int | None = None,
        max_epochs: int | None = 1,
        callbacks: Sequence[Callback] | None = None,
        ckpt_path: str | None = None,
    ) -> Trainer:
        """Train on ``dataloader`` until ``max_steps`` global steps or ``max_epochs`` epochs.

        Args:
          dataloader: any iterable of batches (mappings of arrays); it is
            iterated afresh each epoch. An infinite iterable needs ``max_steps``.
          max_steps: stop when ``trainer.global_step`` reaches this (counts
            steps of earlier ``fit`` calls and of a resumed checkpoint, as in
            Lightning). ``None``: no step limit.
          max_epochs: stop when ``trainer.current_epoch`` reaches this.
            ``None``: no epoch limit (then ``max_steps`` is required).
          callbacks: extra callbacks for this call, after the trainer's own.
          ckpt_path: resume from ``"last"``, ``"best"`` (resolved by a
            checkpoint callback) or a checkpoint directory before training.

        Returns:
          The trainer, for chaining.
        """
        self._check_dataloader(dataloader)
        if max_steps is None and max_epochs is None:
            raise ValueError("fit needs max_steps or max_epochs (both are None)")
        for name, value in (("max_steps", max_steps), ("max_epochs", max_epochs)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")

        self.callbacks = CallbackList([*self._trainer_callbacks, *(callbacks or ())])
        self.dataloader = dataloader
        self._metric_buffer = []
        if ckpt_path is not None:
            self.load_checkpoint(self._resolve_checkpoint_path(ckpt_path))
        self.should_stop = False
        self.fitting = True
        self.max_steps, self.max_epochs = max_steps, max_epochs
        self._lag_logs = all(cb.log_may_lag for cb in self.callbacks)
        try:
            self.callbacks.dispatch("on_train_begin", self)
            while not self._finished():
                self._run_epoch(dataloader)
            self._flush_metrics()
            self.callbacks.dispatch("on_train_end", self)
        except BaseException as exc:
            try:  # a lagged interval that finished before the failure is still logged
                self._emit_pending_log()
            except Exception:  # noqa: BLE001 - its values may be what failed
                self._pending_log = None
            self.callbacks.dispatch_exception(self, exc)
            raise
        finally:
            self.fitting = False
        return self

    def _finished(self) -> bool:
        return (
            self.should_stop
            or (self.max_steps is not None and self.global_step >= self.max_steps)
            or (self.max_epochs is not None and self.current_epoch >= self.max_epochs)
        )

    def _run_epoch(self, dataloader: Iterable[Batch]) -> None:
        epoch = self.current_epoch
        dispatch = self.callbacks.dispatch
        dispatch("on_epoch_begin", self, epoch)
        log_every = self.config.log_every_n_steps
        iterator = iter(dataloader)
        # Resuming mid-epoch: a dataloader that saves its own position
        # (state_dict) is already there; a plain iterable is fast-forwarded.
        if self.batches_seen_in_epoch and not hasattr(dataloader, "state_dict"):
            for _ in range(self.batches_seen_in_epoch):
                next(iterator, None)
        yielded = self.batches_seen_in_epoch > 0
        if self.config.steps_per_execution > 1 and self._can_fuse_source(dataloader):
            yielded = self._run_device_source_steps(dataloader) or yielded
            if self._finished():
                return
        elif self.config.steps_per_execution > 1:
            yielded = self._run_fused_steps(iterator) or yielded
            if self._finished():
                return
        else:
            for batch in iterator:
                yielded = True
                step = self.global_step
                dispatch("on_train_batch_start", self, batch, step)
                metrics = self.train_step(batch)
                self.batches_seen_in_epoch += 1
                self._emit_pending_log()  # the previous interval's, now that this step is queued
                self._metric_buffer.append(metrics)
                if self.global_step % log_every == 0:
                    self._flush_metrics(lag=self._lag_logs)
                dispatch("on_train_batch_end", self, metrics, step)
                if self._finished():
                    return  # mid-epoch stop: the epoch is not complete
        if not yielded:
            raise ValueError(
                f"the dataloader yielded no batches in epoch {epoch}; fit needs at least one "
                "batch per epoch (is it an exhausted iterator? pass a re-iterable object)"
            )
        self.current_epoch += 1
        self.batches_seen_in_epoch = 0
        self._emit_pending_log()
        dispatch("on_epoch_end", self, epoch, dict(self.callback_metrics))

    def _run_fused_steps(self, iterator) -> bool:
        """The epoch with ``steps_per_execution`` batches per compiled call.

        Chunks end at logging steps and at ``max_steps``, so logging and
        stopping happen at the same steps as one batch per call. Hooks run per
        batch: ``on_train_batch_start`` for every batch of a chunk before the
        call, ``on_train_batch_end`` after it. Returns whether any batch came.
        """
        dispatch = self.callbacks.dispatch
        yielded = False
        while not self._finished():
            chunk = list(itertools.islice(iterator, self._chunk_size()))
            if not chunk:
                break
            yielded = True
            first = self.global_step
            for i, batch in enumerate(chunk):
                dispatch("on_train_batch_start", self, batch, first + i)
            self._finish_chunk(self.train_steps(chunk), first, len(chunk))
        return yielded

    def _chunk_size(self, epoch_length: int | None = None) -> int:
        """Steps in the next fused call: it ends at a logging step, ``max_steps`` and the epoch's end."""
        log_every = self.config.log_every_n_steps
        size = min(self.config.steps_per_execution, log_every - self.global_step % log_every)
        if self.max_steps is not None:
            size = min(size, self.max_steps - self.global_step)
        if epoch_length is not None:
            size = min(size, epoch_length - self.batches_seen_in_epoch)
        return size

    def _finish_chunk(self, stacked: Metrics, first: int, size: int) -> None:
        """After a fused call of ``size`` steps from ``first``: buffer, log, per-step end hooks."""
        self.batches_seen_in_epoch += size
        self._emit_pending_log()  # the previous interval's, now that this call is queued
        self._metric_buffer.append(stacked)
        if self.global_step % self.config.log_every_n_steps == 0:
            self._flush_metrics(lag=self._lag_logs)
        if self.callbacks.has_listeners("on_train_batch_end"):
            for i in range(size):
                self.callbacks.dispatch("on_train_batch_end", self, _StepView(stacked, i), first + i)

    def _can_fuse_source(self, source: Any) -> bool:
        """A device source made for this trainer (a source collecting with another
        trainer's policy is read like any dataloader) that knows its epoch length."""
        return (
            is_device_batch_source(source)
            and getattr(source, "trainer", self) is self
            and hasattr(source, "__len__")
        )

    def _run_device_source_steps(self, source: DeviceBatchSource) -> bool:
        """The epoch for a source that makes its batches on the device (a rollout source).

        Each compiled call runs up to ``steps_per_execution`` rounds of "make a
        batch with the current parameters, update on it" (see
        :mod:`artifex_rl.device_source`). Chunks end at logging steps, at
        ``max_steps`` and at the source's epoch length (when it has one).
        Hooks run per batch as in :meth:`_run_fused_steps`, except that
        ``on_train_batch_start`` gets ``batch=None``: the batch does not exist
        until the call has run. Returns whether any batch came.
        """
        dispatch = self.callbacks.dispatch
        k = self.config.steps_per_execution
        try:
            epoch_length: int | None = len(source)  # type: ignore[arg-type]
        except TypeError:
            epoch_length = None  # an infinite source: fit stops at max_steps
        batch_fn = source.device_batch_fn(self.graphdef)
        yielded = False
        while not self._finished():
            size = self._chunk_size(epoch_length)
            if size <= 0:
                break
            yielded = True
            first = self.global_step
            for i in range(size):
                dispatch("on_train_batch_start", self, None, first + i)
            self.train_state, source.source_state, stacked = self._source_step_fn(
                self.train_state, self._frozen_states, source.source_state, size, batch_fn, k
            )
            if size < k:
                stacked = jax.tree.map(lambda x, n=size: x[:n], stacked)
            source.advance(size)
            self.global_step += size
            self.last_outputs = {}
            self._sync_model()
            self._finish_chunk(stacked, first, size)
        return yielded

    def _source_steps(self, state, frozen_states, source_state, n_active, batch_fn, k):
        def round_(carry):
            state, source_state = carry
            batch, source_state = batch_fn(state["params"], state["model_state"], source_state)
            arrays, static = self._split_batch(batch)
            state, metrics, _ = self._step(state, frozen_states, arrays, static)
            return (state, source_state), metrics

        # A chunk shorter than k (at max_steps or an epoch end) runs this same
        # program and skips its last rounds, so it compiles once for any chunk
        # size. A skipped round returns zeros shaped like a real round's
        # metrics: lax.cond traces the real branch first and it records them.
        metrics_shape: list[Any] = []

        def real(carry):
            out = round_(carry)
            metrics_shape.append(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), out[1]))
            return out

        def skip(carry):
            if not metrics_shape:  # only if lax.cond ever traces the other branch first
                traces = self.trace_count
                metrics_shape.append(jax.eval_shape(round_, carry)[1])
                self.trace_count = traces
            return carry, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), metrics_shape[-1])

        def one(carry, index):
            return jax.lax.cond(index < n_active, real, skip, carry)

        (state, source_state), metrics = jax.lax.scan(one, (state, source_state), jnp.arange(k))
        return state, source_state, metrics

    def train_steps(self, batches: Sequence[Batch]) -> Metrics:
        """Run ``len(batches)`` optimisation steps in ONE compiled call (a ``lax.scan``).

        Equivalent to calling :meth:`train_step` on each batch in order (same
        parameters, optimizer state and RNG stream), with one dispatch, one
        model sync and no Python between the steps. The batches must share
        shapes and static entries. Returns the metrics stacked: ``(K,)`` each.
        """
        split = [self._split_batch(b) for b in batches]
        static = split[0][1]
        for i, (_, other) in enumerate(split[1:], start=1):
            if other != static:
                raise ValueError(
                    f"train_steps needs equal static (Python scalar) batch entries; batch 0 has "
                    f"{dict(static)}, batch {i} has {dict(other)}"
                )
        arrays = [arrays for arrays, _ in split]
        if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(arrays)):
            # Host batches: stack on the host, then one transfer.
            batches_in: Any = jax.tree.map(lambda *leaves: np.stack(leaves), *arrays)
        else:
            # Device batches: stacked inside the compiled call. Stacking
            # outside costs one dispatch per batch and leaf (~5 us each on
            # CPU), as much as a small model's step.
            batches_in = tuple(arrays)
        self.train_state, metrics = self._fused_step_fn(
            self.train_state, self._frozen_states, batches_in, static
        )
        self.global_step += len(batches)
        self.last_outputs = {}
        self._sync_model()
        return metrics

    def _fused_steps(self, state, frozen_states, batches, static):
        if isinstance(batches, tuple):  # K batches of device arrays: stack them here
            batches = jax.tree.map(lambda *leaves: jnp.stack(leaves), *batches)

        def one(state, batch):
            state, metrics, _ = self._step(state, frozen_states, batch, static)
            return state, metrics

        return jax.lax.scan(one, state, batches)

    def _flush_metrics(self, lag: bool = False) -> None:
        """Average the buffered device metrics of the interval and log them with ``on_log``.

        The mean is one compiled call on the device (fetching each step's
        scalars separately cost ~5 us per scalar, more than a small model's
        step). Reading it waits for the device; with ``lag`` that read (and
        ``on_log``) happens in :meth:`_emit_pending_log` after the next step
        has been queued, so the device has work while the host logs.
        """
        if self._metric_buffer:
            buffer, self._metric_buffer = self._metric_buffer, []
            means = _interval_mean(buffer)  # dispatched, not waited for
            self._emit_pending_log()
            self._pending_log = (means, self.global_step)
        if not lag:
            self._emit_pending_log()

    def _emit_pending_log(self) -> None:
        if self._pending_log is None:
            return
        means, step = self._pending_log
        self._pending_log = None
        metrics = {k: float(v) for k, v in jax.device_get(means).items()}
        for name, (total, count) in self.ratio_metrics.items():
            # mean(total) / mean(count) over the interval == sum(total) / sum(count).
            if metrics.get(count, 0.0) > 0 and total in metrics:
                metrics[name] = metrics[total] / metrics[count]
        # One dict for all callbacks, in order: a callback may add entries
        # (e.g. throughput) that the loggers after it record.
        self.callback_metrics = metrics
        self.callbacks.dispatch("on_log", self, metrics, step)

    # ------------------------------------------------------------------ #
    # Model and optimizer views
    # ------------------------------------------------------------------ #
    @property
    def model(self) -> nnx.Module:
        """The model, holding the latest parameters."""
        return self._model

    @property
    def optimizer(self) -> nnx.Optimizer | optax.GradientTransformation:
        """The optimizer given at construction, brought up to date with the trainer's state."""
        if self._nnx_optimizer is None:
            return self.tx
        opt = self._nnx_optimizer
        variables = jax.tree.leaves(opt.opt_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
        for var, value in zip(variables, jax.tree.leaves(self.train_state["opt_state"]), strict=True):
            var.set_raw_value(value)
        opt.step.set_raw_value(jnp.asarray(self.global_step, opt.step.get_value().dtype))
        return opt

    def _sync_model(self) -> None:
        """Point the model's Variables at the new arrays (every step, so no
        reference to the model ever sees a donated buffer)."""
        leaves = jax.tree_util.tree_leaves
        for var, value in zip(self._param_vars, leaves(self.train_state["params"]), strict=True):
            _set_variable(var, value)
        if self._state_vars:
            for var, value in zip(self._state_vars, leaves(self.train_state["model_state"]), strict=True):
                _set_variable(var, value)

    @staticmethod
    def _resolve_optimizer(optimizer, params):
        if isinstance(optimizer, nnx.Optimizer):
            tx = optimizer.tx
            opt_state = tx.init(params)
            # Carry over the state of an optimizer that has already stepped.
            theirs = jax.tree.leaves(optimizer.opt_state)
            ours, treedef = jax.tree.flatten(opt_state)
            if len(theirs) == len(ours) and all(
                jnp.shape(a) == jnp.shape(b) for a, b in zip(theirs, ours, strict=True)
            ):
                opt_state = jax.tree.unflatten(treedef, [jnp.array(x) for x in theirs])
            return optimizer, tx, opt_state
        if isinstance(optimizer, optax.GradientTransformation):
            return None, optimizer, optimizer.init(params)
        raise TypeError(
            "optimizer must be an nnx.Optimizer(model, tx, wrt=nnx.Param) or an "
            f"optax.GradientTransformation, got {type(optimizer).__name__}"
        )

    # ------------------------------------------------------------------ #
    # Checkpoints
    # ------------------------------------------------------------------ #
    def checkpoint_metadata(self) -> dict[str, Any]:
        """JSON metadata saved beside ``train_state``: counters, config, callback states."""
        # A finished interval whose (lagged) log is still pending is logged now,
        # so the checkpoint's callback states and callback_metrics include it.
        self._emit_pending_log()
        return {
            "global_step": self.global_step,
            "current_epoch": self.current_epoch,
            "batches_seen_in_epoch": self.batches_seen_in_epoch,
            "config": self.config.to_dict(),
            "trainer_class": type(self).__name__,
            "callbacks": self.callbacks.state_dicts(),
            "callback_metrics": dict(self.callback_metrics),
            # Metrics of the unfinished logging interval, so that a resumed run
            # logs the same interval averages as a straight one.
            "pending_metrics": [
                {k: float(v) for k, v in m.items()} for m in jax.device_get(self._metric_buffer)
            ],
        }

    def dataloader_state(self) -> Any:
        """The dataloader's own position (a pytree), when it exposes ``state_dict()``."""
        dl = self.dataloader
        return dl.state_dict() if dl is not None and hasattr(dl, "state_dict") else None

    def restore(self, train_state: Mapping[str, Any], metadata: Mapping[str, Any], dataloader_state: Any = None) -> None:
        """Load a checkpoint's contents into this trainer (used by :meth:`load_checkpoint`)."""
        expected = jax.tree.structure(self.train_state)
        got = jax.tree.structure(dict(train_state))
        if expected != got:
            raise ValueError(
                "checkpoint does not match this trainer's state structure "
                f"(was it saved from another model/optimizer?):\nexpected {expected}\ngot      {got}"
            )
        self.train_state = jax.tree.map(
            lambda ref, x: jnp.asarray(x, dtype=ref.dtype), self.train_state, dict(train_state)
        )
        self.global_step = int(metadata["global_step"])
        self.current_epoch = int(metadata["current_epoch"])
        self.batches_seen_in_epoch = int(metadata.get("batches_seen_in_epoch", 0))
        self.callback_metrics = dict(metadata.get("callback_metrics", {}))
        self._metric_buffer = [dict(m) for m in metadata.get("pending_metrics", [])]
        self.callbacks.load_state_dicts(metadata.get("callbacks", {}))
        dl = self.dataloader
        if dataloader_state is not None and dl is not None and hasattr(dl, "load_state_dict"):
            dl.load_state_dict(dataloader_state)
        self._sync_model()

    def save_checkpoint(self, path: str) -> str:
        """Save everything needed to continue training to directory ``path`` (synchronously)."""
        from artifex_rl.checkpointing import save_trainer_checkpoint

        return save_trainer_checkpoint(self, path)

    def load_checkpoint(self, path: str) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` or ``ModelCheckpoint``."""
        from artifex_rl.checkpointing import load_trainer_checkpoint

        load_trainer_checkpoint(self, path)

    def _resolve_checkpoint_path(self, ckpt_path: str) -> str:
        if ckpt_path in ("last", "best"):
            for cb in self.callbacks:
                resolve = getattr(cb, "resolve_checkpoint_path", None)
                if resolve is not None:
                    path = resolve(ckpt_path)
                    if path is not None:
                        return path
            raise ValueError(
                f"ckpt_path={ckpt_path!r} needs a ModelCheckpoint callback whose directory "
                "holds a checkpoint; pass a checkpoint directory instead"
            )
        return ckpt_path

    # ------------------------------------------------------------------ #
    # Input checks
    # ------------------------------------------------------------------ #
    @staticmethod
    def _check_dataloader(dataloader: Any) -> None:
        if isinstance(dataloader, Mapping):
            raise TypeError(
                "fit expects an iterable of batches, got a single mapping; wrap it in a list: [batch]"
            )
        try:
            iter(dataloader)
        except TypeError:
            raise TypeError(
                "fit expects an iterable of batches (a list, generator, or object with __iter__), "
                f"got {type(dataloader).__name__}"
            ) from None

    @staticmethod
    def _split_batch(batch: Any) -> tuple[dict[str, Any], tuple]:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"a batch must be a mapping of str -> array (e.g. a dict), got {type(batch).__name__}"
            )
        arrays: dict[str, Any] = {}
        static = []
        for key, value in batch.items():
            if type(value) in _ARRAY_TYPES or isinstance(value, (jax.Array, np.ndarray, np.generic)):
                arrays[key] = value
            elif isinstance(value, Mapping):
                arrays[key] = _check_nested(value, key)
            elif isinstance(value, _STATIC_TYPES):
                static.append((key, value))
            else:
                raise TypeError(
                    f"batch[{key!r}] must be an array (jax or numpy), a mapping of arrays, or a "
                    f"Python scalar; got {type(value).__name__}"
                    + (" (convert lists with jnp.asarray)" if isinstance(value, (list, tuple)) else "")
                )
        return arrays, tuple(sorted(static))


def _check_nested(value: Mapping, prefix: str) -> dict:
    out = {}
    for key, item in value.items():
        if isinstance(item, (jax.Array, np.ndarray, np.generic)):
            out[key] = item
        elif isinstance(item, Mapping):
            out[key] = _check_nested(item, f"{prefix}.{key}")
        else:
            raise TypeError(
                f"batch[{prefix!r}][{key!r}] must be an array, got {type(item).__name__}"
            )
    return out
