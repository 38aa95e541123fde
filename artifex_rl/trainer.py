"""The :class:`Trainer`: a facade over the core, the fit loop and checkpoints.

Long because it is the one place that documents every extension point a
subclass overrides (their docstrings are the API reference); the work itself
lives in ``core/``, ``loop/`` and ``checkpoint/``.

A trainer owns named ``(model, optimizer)`` pairs (one, ``"model"``, by
default), the compiled step and the event bus. Its extension points are the
methods an algorithm overrides: :meth:`compute_loss` (always),
:meth:`prepare_batch`, :meth:`update_schedule`, :meth:`update_phases`,
:meth:`continue_updates` and the extra-state hooks. The work lives elsewhere:

- :mod:`artifex_rl.core.state`: the train state and the lazy model views;
- :mod:`artifex_rl.core.update`: the pure step built from the hooks;
- :mod:`artifex_rl.core.runner`: the one compiled K-round runner;
- :mod:`artifex_rl.loop.fit_loop` and :mod:`artifex_rl.loop.metrics`: ``fit``
  and the ``(sum, count)`` metric aggregator;
- :mod:`artifex_rl.checkpoint.connector`: what a checkpoint holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl.config import TrainerConfig
from artifex_rl.core import state as core_state
from artifex_rl.core.runner import TraceCounter, make_runner, split_batch
from artifex_rl.core.snapshot import PolicySnapshot
from artifex_rl.core.update import Algorithm, StepConfig, UpdatePhase, make_step_fn
from artifex_rl.distributed.placement import MeshPlacement
from artifex_rl.events import Callback, CallbackList
from artifex_rl.loop.fit_loop import FitLoop, TrainingInterrupted, slice_rows
from artifex_rl.loop.metrics import MetricAggregator

Array = jax.Array
Batch = Mapping[str, Any]
Metrics = dict[str, Array]

_log = logging.getLogger(__name__)


class Trainer:
    """A compiled training loop around one or more ``nnx.Module`` s.

    Subclass it and override :meth:`compute_loss` to implement an algorithm.

    Args:
      model: the model to train (an ``nnx.Module``), or ``{name: module}``
        for an algorithm with several trained models (a GAN's generator and
        discriminator).
      optimizer: an ``nnx.Optimizer(model, tx, wrt=...)`` (its ``wrt`` filter
        is honoured: only those variables are trained) or an
        ``optax.GradientTransformation``; ``{name: optimizer}`` with several models.
      config: a :class:`TrainerConfig` (or the subclass's config class).
      callbacks: callbacks used by every ``fit`` call (more can be passed to ``fit``).
      mesh: a ``jax.sharding.Mesh`` with a ``"data"`` axis
        (:func:`artifex_rl.distributed.make_mesh`): batches are split over it
        along their leading axis, parameters and optimizer state are
        replicated or, with ``config.param_sharding="fsdp"``, split; the
        compiled step keeps those shardings and returns replicated metrics.
        ``None`` (default): one device, as before. See ``docs/distributed.md``.

    Attributes:
      config: the config.
      train_state: ``{"params", "model_state", "opt_state", "extra", "rng",
        "step"}``, each of the first three ``{model name: pytree}``: plain
        pytrees of device arrays, what a checkpoint saves.
      global_step: optimisation steps so far (a host int).
      current_epoch: completed passes over the dataloader.
      callback_metrics: the latest logged (interval-mean) host metrics.
      should_stop: set to ``True`` (e.g. by a callback) to end ``fit`` after the current step.
      last_outputs: what the last ``train_step``'s ``prepare_batch`` kept under ``"outputs"``.
      metrics: the :class:`~artifex_rl.loop.metrics.MetricAggregator`.
    """

    config_class: type[TrainerConfig] = TrainerConfig
    #: Logged metrics defined as a ratio of two interval totals:
    #: ``{name: (total_key, count_key)}``, e.g. mean return of the episodes
    #: finished in the interval. Omitted when the count is 0.
    ratio_metrics: dict[str, tuple[str, str]] = {}

    def __init__(
        self,
        model: nnx.Module | Mapping[str, nnx.Module],
        optimizer: nnx.Optimizer | optax.GradientTransformation | Mapping[str, Any],
        config: TrainerConfig | None = None,
        *,
        callbacks: Sequence[Callback] = (),
        mesh: jax.sharding.Mesh | None = None,
    ):
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} expects a {self.config_class.__name__} config, "
                f"got {type(config).__name__}"
            )
        self.config = config
        models = core_state.named(model, "model")
        optimizers = core_state.named(optimizer, "optimizer")
        if set(models) != set(optimizers):
            raise ValueError(
                f"every model needs its optimizer: models {sorted(models)}, optimizers {sorted(optimizers)}"
            )
        for name, module in models.items():
            if not isinstance(module, nnx.Module):
                raise TypeError(f"model {name!r} must be a flax.nnx.Module, got {type(module).__name__}")
        self.slots: dict[str, core_state.ModelSlot] = {}
        self.txs: dict[str, optax.GradientTransformation] = {}
        self._nnx_optimizers: dict[str, nnx.Optimizer | None] = {}
        params, model_state, opt_state = {}, {}, {}
        for name, module in models.items():
            tx, wrt, nnx_opt = core_state.resolve_optimizer(optimizers[name], module, name)
            self.slots[name], params[name], model_state[name] = core_state.split_model(module, wrt)
            self.txs[name], self._nnx_optimizers[name] = tx, nnx_opt
            opt_state[name] = core_state.initial_opt_state(tx, params[name], nnx_opt)
        self.train_state: dict[str, Any] = {
            "params": params,
            "model_state": model_state,
            "opt_state": opt_state,
            "extra": {},
            "rng": jax.random.PRNGKey(config.seed),
            "step": jnp.zeros((), jnp.int32),
        }
        self._views = core_state.ModelViews(models, self.slots, self.train_state)
        self.train_state["extra"] = self.init_extra_state()
        self.placement: MeshPlacement | None = None
        if mesh is not None:
            self.placement = MeshPlacement(mesh, config.param_sharding)
            self.train_state = self.placement.place_state(self.train_state)
        self._summary_printed = False
        # Frozen models (a reference policy): passed to the step, never donated,
        # never differentiated, saved with every checkpoint.
        self._frozen_graphdefs: dict[str, nnx.GraphDef] = {}
        self.frozen_states: dict[str, Any] = {}

        self.callbacks = CallbackList(callbacks)
        self._trainer_callbacks = list(callbacks)
        self.global_step = 0
        self.current_epoch = 0
        self.batches_seen_in_epoch = 0
        self.callback_metrics: dict[str, float] = {}
        self.should_stop = False
        self.fitting = False
        self.lag_logs = False
        #: The last step of the intervals whose ``on_log`` calls are being made now.
        self.logged_through_step = 0
        self.dataloader: Iterable[Batch] | None = None
        self.last_outputs: dict[str, Array] = {}
        self.metrics = MetricAggregator(self.ratio_metrics, raise_on_skipped=config.nan_policy == "raise")
        self._last_logged: tuple[int, dict[str, float]] | None = None
        self._traces = TraceCounter()
        self._compiled: dict[str, Any] | None = None

    # ------------------------------------------------------------------ #
    # The algorithm's extension points
    # ------------------------------------------------------------------ #
    def compute_loss(self, model: Any, batch: Mapping[str, Array], rng: Array) -> tuple[Any, Mapping[str, Array]]:
        """Return ``(loss, metrics)`` for one (mini)batch; runs under ``jit`` and ``grad``.

        Args:
          model: the model rebuilt from the current parameters; ``{name: module}``
            for a trainer of several models (then also a ``phase=`` keyword
            when :meth:`update_phases` has more than one phase).
          batch: the (mini)batch as returned by :meth:`prepare_batch`.
          rng: a fresh PRNG key for this update.

        Returns:
          ``loss``: a scalar, or a :class:`~artifex_rl.core.loss_terms.LossTerm`
          ``(total, count)`` (or a tuple of them) for losses normalised by a
          count of items, which then stays exact under gradient accumulation;
          ``metrics``: a dict of scalars.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must override compute_loss(model, batch, rng) -> (loss, metrics)"
        )

    def prepare_batch(self, model: Any, batch: dict[str, Any], rng: Array, frozen: Mapping[str, nnx.Module]) -> dict[str, Any]:
        """Whole-batch work before the updates, inside the compiled step (no gradient).

        Override to compute returns, advantages or reference log-probs. When
        the update schedule splits the batch (minibatches, accumulation),
        every entry of the returned dict must share its leading sample axis,
        except ``"metrics"`` (a dict of scalars reported with the step's
        metrics) and ``"outputs"`` (arrays kept in ``trainer.last_outputs``).

        Args:
          model: the model(s) with the parameters *before* this step's updates.
          batch: the batch as given to ``train_step`` (static entries included).
          rng: a PRNG key for this step's preparation.
          frozen: frozen models registered with :meth:`register_frozen_model`.
        """
        return batch

    def update_schedule(self) -> tuple[int, int]:
        """``(epochs, minibatches)`` of gradient updates per batch; default ``(1, 1)``."""
        return 1, 1

    def update_phases(self) -> tuple[UpdatePhase, ...]:
        """The kinds of update run in turn on each minibatch; default: one training every model.

        A GAN returns ``(UpdatePhase("discriminator", ("discriminator",), repeats=n_critic),
        UpdatePhase("generator", ("generator",)))``; ``compute_loss`` then gets ``phase=``.
        """
        return (UpdatePhase("train", tuple(self.slots)),)

    def continue_updates(self, metrics: Mapping[str, Array]) -> Array | None:
        """A boolean array that stops this batch's remaining updates (PPO's ``target_kl``:
        the update whose metrics cross it is not applied), or ``None`` to run all of them."""
        return None

    def init_extra_state(self) -> Any:
        """Trainer-owned arrays kept in ``train_state["extra"]`` and checkpointed (an EMA)."""
        return {}

    def before_update(self, extra: Any, model: Any, batch: dict[str, Any], rng: Array) -> tuple[Any, dict[str, Any]]:
        """Inside the step, before :meth:`prepare_batch`: read/write the extra state,
        add to the batch (an EBM's replay buffer hands out chain starts). Default: nothing."""
        return extra, batch

    def after_update(self, extra: Any, params: Mapping[str, Any], model_state: Mapping[str, Any]) -> Any:
        """Inside the step, after the updates: e.g. move an EMA towards ``params``. Default: nothing."""
        return extra

    def register_frozen_model(self, name: str, module: nnx.Module) -> None:
        """Make ``module`` available to :meth:`prepare_batch` as ``frozen[name]``.

        Its current state is copied (later changes to ``module`` are not seen)
        and saved with every checkpoint, so a resumed run uses the same one.
        """
        graphdef, state = nnx.split(module)
        self._frozen_graphdefs[name] = graphdef
        self.frozen_states[name] = jax.tree.map(jnp.array, nnx.to_pure_dict(state))
        if self.placement is not None:
            self.frozen_states[name] = self.placement.place_frozen(self.frozen_states[name])
        self._compiled = None

    # ------------------------------------------------------------------ #
    # Compiled functions
    # ------------------------------------------------------------------ #
    def _algorithm(self) -> Algorithm:
        cls = type(self)
        overridden = lambda name: getattr(cls, name) is not getattr(Trainer, name)  # noqa: E731
        return Algorithm(
            compute_loss=self.compute_loss,
            prepare_batch=self.prepare_batch,
            schedule=self.update_schedule(),
            phases=tuple(self.update_phases()),
            continue_updates=self.continue_updates if overridden("continue_updates") else None,
            before_update=self.before_update if overridden("before_update") else None,
            after_update=self.after_update if overridden("after_update") else None,
            name=cls.__name__,
        )

    def _compiled_fns(self) -> dict[str, Any]:
        if self._compiled is None:
            cfg = self.config
            placement = self.placement
            step = make_step_fn(
                self._algorithm(),
                self.slots,
                self.txs,
                StepConfig(
                    cfg.grad_accum_steps, cfg.max_grad_norm, cfg.log_grad_norm, cfg.scan_unroll,
                    check_finite=cfg.nan_policy != "off",
                    constrain_split=None if placement is None else placement.constrain_split,
                ),
                self._frozen_graphdefs,
            )
            if placement is not None:
                step = placement.wrap_step(step)
            self._compiled = {
                "step_fn": step,
                "step": jax.jit(self._traces.counted(step), donate_argnums=(0,), static_argnums=(3,)),
            }
        return self._compiled

    def _runner(self, k: int) -> Any:
        """The compiled K-round runner (one per K; ``fit`` uses ``steps_per_execution``)."""
        compiled = self._compiled_fns()
        if k not in compiled:
            runner = make_runner(
                compiled["step_fn"], k, self.config.scan_unroll, self.policy_model_name,
                None if self.placement is None else self.placement.constrain_batch,
            )
            # The source state is not donated: a source's state_dict() hands out those arrays.
            compiled[k] = jax.jit(
                self._traces.counted(runner), donate_argnums=(0,), static_argnames=("static", "batch_fn")
            )
        return compiled[k]

    def recompile(self) -> None:
        """Forget the compiled step (after changing something it closed over, e.g. a reward function)."""
        self._compiled = None

    @property
    def trace_count(self) -> int:
        """How many times a step program has been traced (compiled)."""
        return self._traces.count

    # ------------------------------------------------------------------ #
    # Steps
    # ------------------------------------------------------------------ #
    def train_step(self, batch: Batch) -> Metrics:
        """Run one compiled optimisation step on ``batch`` and return its metrics.

        The metrics are device scalars (no host sync): always ``loss``, plus
        ``grad_norm`` (with clipping or ``log_grad_norm``), whatever
        ``compute_loss`` and ``prepare_batch`` reported and the batch's own
        ``"metrics"`` entry. In a hand-written loop the trainer also closes a
        logging interval every ``log_every_n_steps`` steps (see
        :meth:`Callback.on_train_batch_end`).
        """
        arrays, static = split_batch(batch)
        if self.placement is not None:
            arrays = self.placement.place_batch(arrays)
        self.train_state, metrics, self.last_outputs = self._compiled_fns()["step"](
            self.train_state, self.frozen_states, arrays, static
        )
        self._after_steps(1)
        if not self.fitting:
            self.metrics.add(metrics)
            if self.global_step % self.config.log_every_n_steps == 0:
                self.metrics.close_interval(self.global_step)
                self.emit_log(dispatch=False)
        return metrics

    def train_steps(self, batches: Sequence[Batch]) -> Metrics:
        """Run ``len(batches)`` optimisation steps in ONE compiled call.

        Equivalent to :meth:`train_step` on each batch in order (same
        parameters, optimizer state and RNG stream). The batches must share
        shapes and static entries. Returns the metrics stacked: ``(K,)`` each.
        """
        if not batches:
            raise ValueError("train_steps needs at least one batch")
        metrics = self.run_chunk(batches=batches, k=max(len(batches), self.config.steps_per_execution))
        if not self.fitting:
            self.metrics.add(metrics)
        return metrics

    def run_chunk(
        self, *, batches: Sequence[Batch] | None = None, source: Any = None, size: int | None = None, k: int | None = None
    ) -> Metrics:
        """Up to ``steps_per_execution`` steps in one call of the compiled runner.

        Either ``batches`` (host or device batches of equal shapes) or a device
        ``source`` with the number of rounds ``size``. Returns ``(size, ...)`` metrics.
        """
        k = k or self.config.steps_per_execution
        run = self._runner(k)
        placement = self.placement
        # On a mesh a host scalar, the same on every process (a device scalar is one process's).
        rounds = jnp.int32 if placement is None else np.int32
        if source is not None:
            source_state = source.source_state
            if placement is not None:
                source_state = placement.place_source_state(source_state)
            self.train_state, source.source_state, metrics = run(
                self.train_state, self.frozen_states, source_state, None,
                static=(), n_active=rounds(size), batch_fn=source.device_batch_fn(self.slots[self.policy_model_name].graphdef),
            )
            source.advance(size)
        else:
            size = len(batches)
            split = [split_batch(b) for b in batches]
            static = split[0][1]
            for i, (_, other) in enumerate(split[1:], start=1):
                if other != static:
                    raise ValueError(
                        f"batches of one call need equal static (Python scalar) entries; batch 0 has "
                        f"{dict(static)}, batch {i} has {dict(other)}"
                    )
            arrays = [a for a, _ in split]
            arrays += [arrays[-1]] * (k - size)  # padding rounds are skipped inside the call
            if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(arrays)):
                stacked: Any = jax.tree.map(lambda *leaves: np.stack(leaves), *arrays)
                if placement is not None:
                    stacked = placement.place_batch(stacked, leading=1)
            else:  # device batches: stacked inside the call (no dispatch per batch)
                stacked = tuple(arrays if placement is None else [placement.place_batch(a) for a in arrays])
            self.train_state, _, metrics = run(
                self.train_state, self.frozen_states, None, stacked,
                static=static, n_active=rounds(size), batch_fn=None,
            )
        if size < k:
            metrics = slice_rows(metrics, size)
        self.last_outputs = {}
        self._after_steps(size)
        return metrics

    def set_train_state(self, train_state: dict[str, Any]) -> None:
        """Replace the train state (e.g. on restore); the model views refresh on next access.

        On a mesh the state is moved onto the trainer's shardings (a restore
        already reads it onto them)."""
        if self.placement is not None:
            train_state = self.placement.place_state(train_state)
        self.train_state = train_state
        self._views.mark_stale(train_state)

    def _after_steps(self, n: int) -> None:
        self.global_step += n
        self._views.mark_stale(self.train_state)
        if not self.fitting:  # a hand-written loop: the user's model object stays current
            self._views.refresh()

    # ------------------------------------------------------------------ #
    # The loop
    # ------------------------------------------------------------------ #
    def fit(
        self,
        dataloader: Iterable[Batch],
        *,
        max_steps: int | None = None,
        max_epochs: int | None = None,
        callbacks: Sequence[Callback] | None = None,
        ckpt_path: str | None = None,
    ) -> Trainer:
        """Train on ``dataloader`` until ``max_steps`` global steps or ``max_epochs`` epochs.

        As in Lightning: with ``max_steps`` alone, epochs are unlimited; with
        neither, one epoch is run (``max_epochs=1``).

        Args:
          dataloader: any iterable of batches (mappings of arrays); it is
            iterated afresh each epoch. An infinite iterable needs ``max_steps``.
          max_steps: stop when ``trainer.global_step`` reaches this (counts
            steps of earlier ``fit`` calls and of a resumed checkpoint).
          max_epochs: stop when ``trainer.current_epoch`` reaches this.
          callbacks: extra callbacks for this call, after the trainer's own.
          ckpt_path: resume from ``"last"``, ``"best"`` (resolved by a
            checkpoint callback) or a checkpoint directory before training.

        SIGINT (Ctrl-C) or SIGTERM during ``fit`` finishes the running step or
        chunk, then raises :class:`~artifex_rl.loop.fit_loop.TrainingInterrupted`
        (a ``KeyboardInterrupt``) after ``on_exception`` (a ``ModelCheckpoint``
        saves the state) and ``on_train_end``; ``fit(..., ckpt_path="last")``
        continues exactly. A second signal acts at once.

        Returns:
          The trainer, for chaining.
        """
        _check_dataloader(dataloader)
        for name, value in (("max_steps", max_steps), ("max_epochs", max_epochs)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")
        if max_steps is None and max_epochs is None:
            max_epochs = 1
        self.callbacks = CallbackList([*self._trainer_callbacks, *(callbacks or ())])
        self.dataloader = dataloader
        self.metrics.reset()
        if ckpt_path is not None:
            path = self._resolve_checkpoint_path(ckpt_path)
            if path is not None:
                self.load_checkpoint(path)
        self.should_stop = False
        self.max_steps, self.max_epochs = max_steps, max_epochs
        if self.placement is not None and not self._summary_printed:
            self._summary_printed = True
            if jax.process_index() == 0:
                print(self.sharding_summary(), flush=True)
        loop = FitLoop(self, dataloader, max_steps, max_epochs)
        self.fitting = True
        self.lag_logs = not any(cb.waits_for_logs for cb in self.callbacks)
        try:
            loop.run()
        except BaseException as exc:
            try:  # a lagged interval that finished before the failure is still logged
                self.emit_log()
            except Exception:  # noqa: BLE001 - its values may be what failed
                pass
            self.callbacks.dispatch_exception(self, exc)
            if isinstance(exc, TrainingInterrupted):
                # The state is consistent (the chunk finished): end the run as usual.
                self.callbacks.dispatch("on_train_end", self)
            raise
        finally:
            self.fitting = False
            self._views.refresh()
        return self

    def sharding_summary(self, batch: Batch | None = None) -> str:
        """Where the parameters, optimizer state and (if given) ``batch`` live on the mesh.

        ``fit`` prints it once on process 0; pass a batch to see its leading
        axis split (each entry's per-device shape). Without a mesh: one line.
        """
        if self.placement is None:
            return "sharding: no mesh (one device: " + str(jax.devices()[0]) + ")"
        from artifex_rl.distributed.summary import sharding_summary

        placed = None if batch is None else self.placement.place_batch(split_batch(batch)[0])
        return sharding_summary(self.placement.mesh, self.placement.mode, self.train_state, placed)

    @property
    def mesh(self) -> jax.sharding.Mesh | None:
        """The mesh the trainer shards over (``None``: one device)."""
        return None if self.placement is None else self.placement.mesh

    def emit_log(self, *, force: bool = False, dispatch: bool = True) -> None:
        """Read the closed intervals' means (if any), oldest first, and dispatch ``on_log`` for each.

        ``force`` first closes the open interval (at the end of ``fit``).
        """
        if force:
            self.metrics.close_interval(self.global_step)
        pending = self.metrics.pending_steps
        if pending:
            # One call's intervals are read together; a rate meter wants the last of them.
            self.logged_through_step = pending[-1]
        while (taken := self.metrics.take_pending()) is not None:
            means, step = taken
            # One dict for all callbacks, in order: a callback may add entries
            # (e.g. throughput) that the loggers after it record.
            self.callback_metrics = means
            self._last_logged = (step, means)
            if dispatch:
                self.callbacks.dispatch("on_log", self, means, step)

    def logged_metrics_at(self, step: int) -> dict[str, float] | None:
        """The interval means logged at ``step`` by a hand-written loop, else ``None``."""
        if self._last_logged is not None and self._last_logged[0] == step:
            return self._last_logged[1]
        return None

    # ------------------------------------------------------------------ #
    # Model and optimizer views
    # ------------------------------------------------------------------ #
    @property
    def policy_model_name(self) -> str:
        """The model sources act with and ``trainer.model`` returns: ``"model"`` or the first name."""
        return core_state.SINGLE if core_state.SINGLE in self.slots else next(iter(self.slots))

    @property
    def model(self) -> nnx.Module:
        """The (policy) model, holding the latest parameters (refreshed on access)."""
        return self._views.get(self.policy_model_name)

    @property
    def models(self) -> dict[str, nnx.Module]:
        """Every trained model by name, holding the latest parameters."""
        return {name: self._views.get(name) for name in self._views.names()}

    @property
    def graphdef(self) -> nnx.GraphDef:
        """The policy model's static structure."""
        return self.slots[self.policy_model_name].graphdef

    def policy_snapshot(self, name: str | None = None) -> PolicySnapshot:
        """The current parameters of model ``name`` (default: the policy) for a data source."""
        name = name or self.policy_model_name
        return PolicySnapshot(
            self.slots[name].graphdef, self.train_state["params"][name], self.train_state["model_state"][name]
        )

    @property
    def optimizer(self) -> nnx.Optimizer | optax.GradientTransformation:
        """The policy model's optimizer as given, brought up to date with the trainer's state."""
        name = self.policy_model_name
        opt = self._nnx_optimizers[name]
        if opt is None:
            return self.txs[name]
        variables = jax.tree.leaves(opt.opt_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
        for var, value in zip(variables, jax.tree.leaves(self.train_state["opt_state"][name]), strict=True):
            var.set_value(value)
        count = _optax_count(self.train_state["opt_state"][name])
        opt.step.set_value(jnp.asarray(self.global_step if count is None else count, opt.step.get_value().dtype))
        return opt

    # ------------------------------------------------------------------ #
    # Checkpoints
    # ------------------------------------------------------------------ #
    def dataloader_state(self) -> Any:
        """The dataloader's own position (a pytree), when it exposes ``state_dict()``."""
        dl = self.dataloader
        return dl.state_dict() if dl is not None and hasattr(dl, "state_dict") else None

    def save_checkpoint(self, path: str) -> str:
        """Save everything needed to continue training to directory ``path`` (synchronously)."""
        from artifex_rl.checkpoint.connector import save_trainer_checkpoint

        return save_trainer_checkpoint(self, path)

    def load_checkpoint(self, path: str) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` or ``ModelCheckpoint``."""
        from artifex_rl.checkpoint.connector import load_trainer_checkpoint

        load_trainer_checkpoint(self, path)

    def _resolve_checkpoint_path(self, ckpt_path: str) -> str | None:
        if ckpt_path in ("last", "best"):
            for cb in self.callbacks:
                resolve = getattr(cb, "resolve_checkpoint_path", None)
                if resolve is not None:
                    path = resolve(ckpt_path)
                    if path is not None:
                        return path
            if ckpt_path == "last":
                _log.warning("ckpt_path='last': no checkpoint found yet; training from the start")
                return None
            raise ValueError(
                f"ckpt_path={ckpt_path!r} needs a ModelCheckpoint callback whose directory "
                "holds a checkpoint; pass a checkpoint directory instead"
            )
        return ckpt_path


def _optax_count(opt_state: Any) -> int | None:
    """The step count optax keeps (e.g. Adam's ``count``), if the state has one."""
    for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        if leaf_path and getattr(leaf_path[-1], "name", None) == "count":
            return int(leaf)
    return None


def _check_dataloader(dataloader: Any) -> None:
    if isinstance(dataloader, Mapping):
        raise TypeError("fit expects an iterable of batches, got a single mapping; wrap it in a list: [batch]")
    try:
        iter(dataloader)
    except TypeError:
        raise TypeError(
            "fit expects an iterable of batches (a list, generator, or object with __iter__), "
            f"got {type(dataloader).__name__}"
        ) from None
