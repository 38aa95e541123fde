"""The Trainer core: compiled step, fit loop, event bus, accumulation, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from artifex_rl import Callback, Trainer, TrainerConfig
from tests._models import RegressionTrainer, TinyMLP, make_regression_trainer, regression_batches


class Recorder(Callback):
    def __init__(self):
        self.calls: list[tuple] = []

    def on_train_begin(self, trainer):
        self.calls.append(("train_begin",))

    def on_train_end(self, trainer):
        self.calls.append(("train_end",))

    def on_epoch_begin(self, trainer, epoch):
        self.calls.append(("epoch_begin", epoch))

    def on_epoch_end(self, trainer, epoch, metrics):
        self.calls.append(("epoch_end", epoch))

    def on_train_batch_start(self, trainer, batch, step):
        self.calls.append(("batch_start", step))

    def on_train_batch_end(self, trainer, metrics, step):
        self.calls.append(("batch_end", step))

    def on_log(self, trainer, metrics, step):
        self.calls.append(("log", step))

    def on_exception(self, trainer, exception):
        self.calls.append(("exception", type(exception).__name__))


def test_hook_order_on_real_fit():
    trainer = make_regression_trainer(log_every_n_steps=2)
    rec = Recorder()
    trainer.fit(regression_batches(n_batches=3), max_epochs=2, callbacks=[rec])
    expected = [("train_begin",)]
    step = 0
    for epoch in range(2):
        expected.append(("epoch_begin", epoch))
        for _ in range(3):
            expected.append(("batch_start", step))
            step += 1
            if step % 2 == 0:
                expected.append(("log", step))
            expected.append(("batch_end", step - 1))
        expected.append(("epoch_end", epoch))
    # The last, partial logging interval is flushed before on_train_end.
    expected += [("log", 6), ("train_end",)] if step % 2 else [("train_end",)]
    assert rec.calls == expected
    assert trainer.global_step == 6 and trainer.current_epoch == 2


def test_runs_last_callbacks_run_after_the_others():
    order = []

    class Late(Callback):
        runs_last = True

        def on_train_begin(self, trainer):
            order.append("late")

    class Early(Callback):
        def __init__(self, name):
            self.name = name

        def on_train_begin(self, trainer):
            order.append(self.name)

    trainer = make_regression_trainer()
    trainer.fit(regression_batches(1), callbacks=[Late(), Early("a"), Early("b")])
    assert order == ["a", "b", "late"]


def test_should_stop_ends_fit_after_the_current_step():
    class StopAt(Callback):
        def on_train_batch_end(self, trainer, metrics, step):
            if step == 4:
                trainer.should_stop = True

    trainer = make_regression_trainer()
    trainer.fit(regression_batches(10), max_epochs=3, callbacks=[StopAt()])
    assert trainer.global_step == 5
    assert trainer.current_epoch == 0  # stopped mid-epoch


def test_step_compiles_once_over_many_same_shaped_batches():
    trainer = make_regression_trainer()
    trainer.fit(regression_batches(n_batches=25), max_epochs=2)
    assert trainer.global_step == 50
    assert trainer.trace_count == 1


def test_a_new_batch_shape_compiles_a_second_time_only():
    trainer = make_regression_trainer()
    for b in regression_batches(3, batch_size=8) + regression_batches(3, batch_size=16):
        trainer.train_step(b)
    assert trainer.trace_count == 2


def test_model_is_current_after_train_step_and_users_reference_stays_valid():
    model = TinyMLP(rngs=nnx.Rngs(0))
    trainer = RegressionTrainer(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))
    batch = regression_batches(1)[0]
    before = np.asarray(model(batch["x"]))
    trainer.train_step(batch)
    trainer.train_step(batch)  # second step donates the first step's buffers
    # The user's own reference is the same object and holds live, new arrays.
    assert trainer.model is model
    after = np.asarray(model(batch["x"]))
    assert not np.allclose(before, after)
    rebuilt = trainer.policy_snapshot().merge()
    np.testing.assert_array_equal(after, np.asarray(rebuilt(batch["x"])))


def test_train_step_matches_a_hand_written_optax_step():
    model = TinyMLP(rngs=nnx.Rngs(3))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    batches = regression_batches(5)

    def loss(p, b):
        m = nnx.merge(graphdef, p, nnx.to_pure_dict(rest))
        return jnp.mean((m(b["x"]) - b["y"]) ** 2)

    trainer = RegressionTrainer(model, tx)
    for b in batches:
        g = jax.grad(loss)(params, b)
        upd, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, upd)
        trainer.train_step(b)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
        params,
        trainer.train_state["params"]["model"],
    )


def test_train_step_returns_device_metrics_with_loss():
    trainer = make_regression_trainer()
    metrics = trainer.train_step(regression_batches(1)[0])
    assert set(metrics) == {"loss", "mae", "skipped_step"}  # skipped_step: the nan_policy's flag
    assert all(isinstance(v, jax.Array) and v.shape == () for v in metrics.values())
    assert float(metrics["skipped_step"]) == 0.0


def test_grad_norm_is_reported_on_request_and_equals_the_gradients_norm():
    batch = regression_batches(1)[0]
    trainer = make_regression_trainer(log_grad_norm=True)
    model = trainer.policy_snapshot().merge()
    grads = nnx.grad(lambda m: jnp.mean((m(batch["x"]) - batch["y"]) ** 2))(model)
    expected = np.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads)))
    metrics = trainer.train_step(batch)
    np.testing.assert_allclose(float(metrics["grad_norm"]), expected, rtol=1e-5)


@pytest.mark.parametrize("k", [2, 4])
def test_gradient_accumulation_equals_one_step_on_the_concatenated_batch(k):
    batch = regression_batches(1, batch_size=32)[0]
    plain = make_regression_trainer(seed=1, lr=0.05)
    accum = make_regression_trainer(seed=1, lr=0.05, grad_accum_steps=k)
    m_plain = plain.train_step(batch)
    m_accum = accum.train_step(batch)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        plain.train_state["params"],
        accum.train_state["params"],
    )
    np.testing.assert_allclose(m_plain["loss"], m_accum["loss"], rtol=1e-5)


def test_gradient_clipping_bounds_the_update():
    batch = regression_batches(1)[0]
    batch = {"x": batch["x"], "y": batch["y"] * 1000.0}  # huge gradients
    model = TinyMLP(rngs=nnx.Rngs(0))
    trainer = RegressionTrainer(model, optax.sgd(1.0), TrainerConfig(max_grad_norm=0.5))
    before = jax.tree.map(np.array, trainer.train_state["params"])
    metrics = trainer.train_step(batch)
    assert float(metrics["grad_norm"]) > 0.5
    delta = jax.tree.map(lambda a, b: np.asarray(a) - b, trainer.train_state["params"], before)
    assert float(optax.tree.norm(delta)) == pytest.approx(0.5, rel=1e-4)


def test_logged_metrics_are_the_interval_average():
    trainer = make_regression_trainer(log_every_n_steps=4)
    logged = []

    class Grab(Callback):
        def on_log(self, trainer, metrics, step):
            logged.append((step, metrics))

        def on_train_batch_end(self, trainer, metrics, step):
            per_step.append(float(metrics["loss"]))

    per_step: list[float] = []
    trainer.fit(regression_batches(8), callbacks=[Grab()])
    assert [s for s, _ in logged] == [4, 8]
    np.testing.assert_allclose(logged[0][1]["loss"], np.mean(per_step[:4]), rtol=1e-6)
    np.testing.assert_allclose(logged[1][1]["loss"], np.mean(per_step[4:]), rtol=1e-6)
    assert trainer.callback_metrics == logged[-1][1]


def test_max_steps_counts_the_global_step_across_fit_calls():
    trainer = make_regression_trainer()
    data = regression_batches(10)
    trainer.fit(data, max_steps=4, max_epochs=None)
    assert trainer.global_step == 4
    trainer.fit(data, max_steps=4, max_epochs=None)  # already there: no step
    assert trainer.global_step == 4
    trainer.fit(data, max_steps=13, max_epochs=None)
    assert trainer.global_step == 13
    # Mid-epoch position was kept: 4 steps, then 6 more finish epoch 0, then 3 of epoch 1.
    assert trainer.current_epoch == 1 and trainer.batches_seen_in_epoch == 3


def test_learning_reduces_the_loss():
    trainer = make_regression_trainer(log_every_n_steps=8)
    data = regression_batches(8)
    first = float(trainer.train_step(data[0])["loss"])
    trainer.fit(data, max_epochs=20)
    assert trainer.callback_metrics["loss"] < 0.1 * first


def test_exception_reaches_every_on_exception_then_is_reraised():
    class Boom(Callback):
        def on_train_batch_end(self, trainer, metrics, step):
            if step == 2:
                raise RuntimeError("boom")

    recs = [Recorder(), Recorder()]
    trainer = make_regression_trainer()
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(regression_batches(5), callbacks=[recs[0], Boom(), recs[1]])
    for rec in recs:
        assert rec.calls[-1] == ("exception", "RuntimeError")
        assert ("train_end",) not in rec.calls


def test_update_schedule_and_continue_updates():
    class Multi(RegressionTrainer):
        def __init__(self, *a, stop=False, **k):
            super().__init__(*a, **k)
            self.stop = stop

        def update_schedule(self):
            return 3, 1

        def continue_updates(self, metrics):
            return jnp.array(not self.stop)

    batch = regression_batches(1)[0]

    def build(cls, **kw):
        model = TinyMLP(rngs=nnx.Rngs(0))
        return cls(model, optax.sgd(0.1), **kw)

    single = build(RegressionTrainer)
    for _ in range(3):
        single.train_step(batch)
    multi = build(Multi)
    multi.train_step(batch)
    stopped = build(Multi, stop=True)
    stopped_metrics = stopped.train_step(batch)
    one = build(RegressionTrainer)
    one.train_step(batch)

    def close(a, b):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)

    close(multi.train_state["params"], single.train_state["params"])
    # The update whose metrics trip the stop rule is not applied (Spinning Up's early stop).
    fresh = build(RegressionTrainer)
    close(stopped.train_state["params"], fresh.train_state["params"])
    assert float(stopped_metrics["num_updates"]) == 0.0


def test_static_batch_entries_are_compile_time_constants():
    seen = []

    class Static(RegressionTrainer):
        def compute_loss(self, model, batch, rng):
            seen.append(batch["scale"])
            loss, m = super().compute_loss(model, batch, rng)
            return loss * batch["scale"], m

    model = TinyMLP(rngs=nnx.Rngs(0))
    trainer = Static(model, optax.sgd(0.1))
    b = regression_batches(1)[0]
    trainer.train_step({**b, "scale": 2})
    trainer.train_step({**b, "scale": 2})
    assert trainer.trace_count == 1
    trainer.train_step({**b, "scale": 3})
    assert trainer.trace_count == 2
    assert seen == [2, 3]


def test_optimizer_view_is_brought_up_to_date():
    model = TinyMLP(rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    trainer = RegressionTrainer(model, opt)
    for b in regression_batches(3):
        trainer.train_step(b)
    synced = trainer.optimizer
    assert synced is opt
    assert int(synced.step[...]) == 3
    mu_ours = jax.tree.leaves(trainer.train_state["opt_state"])
    mu_theirs = [np.asarray(v) for v in jax.tree.leaves(opt.opt_state)]
    for a, b in zip(mu_ours, mu_theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


# ---------------------------------------------------------------- errors


def test_non_iterable_dataloader_is_rejected():
    trainer = make_regression_trainer()
    with pytest.raises(TypeError, match="iterable of batches.*int"):
        trainer.fit(42)
    with pytest.raises(TypeError, match="single mapping"):
        trainer.fit(regression_batches(1)[0])


def test_empty_dataloader_is_rejected():
    trainer = make_regression_trainer()
    with pytest.raises(ValueError, match="yielded no batches in epoch 0"):
        trainer.fit([])


def test_exhausted_iterator_is_reported_in_the_second_epoch():
    trainer = make_regression_trainer()
    with pytest.raises(ValueError, match="no batches in epoch 1"):
        trainer.fit(iter(regression_batches(2)), max_epochs=2)


def test_batch_that_is_not_a_mapping_of_arrays_is_rejected():
    trainer = make_regression_trainer()
    with pytest.raises(TypeError, match="mapping of str -> array.*tuple"):
        trainer.train_step((np.zeros(3), np.zeros(3)))
    with pytest.raises(TypeError, match=r"batch\['x'\].*list.*jnp.asarray"):
        trainer.train_step({"x": [[1.0] * 4], "y": np.zeros((1, 1), np.float32)})
    with pytest.raises(TypeError, match=r"batch\['x'\].*object"):
        trainer.train_step({"x": object(), "y": np.zeros((1, 1), np.float32)})


def test_non_scalar_loss_is_rejected_with_its_shape():
    class Bad(Trainer):
        def compute_loss(self, model, batch, rng):
            return (model(batch["x"]) - batch["y"]) ** 2, {}

    model = TinyMLP(rngs=nnx.Rngs(0))
    trainer = Bad(model, optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"scalar loss, got shape \(16, 1\)"):
        trainer.train_step(regression_batches(1)[0])


def test_missing_compute_loss_says_what_to_override():
    model = TinyMLP(rngs=nnx.Rngs(0))
    with pytest.raises(NotImplementedError, match="compute_loss"):
        Trainer(model, optax.sgd(0.1)).train_step(regression_batches(1)[0])


def test_bad_constructor_arguments():
    model = TinyMLP(rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="nnx.Module"):
        RegressionTrainer(object(), optax.sgd(0.1))
    with pytest.raises(TypeError, match="optimizer must be"):
        RegressionTrainer(model, "adam")
    with pytest.raises(ValueError, match="grad_accum_steps"):
        TrainerConfig(grad_accum_steps=0)


def test_accumulation_with_indivisible_batch_names_the_sizes():
    trainer = make_regression_trainer(grad_accum_steps=3)
    with pytest.raises(ValueError, match=r"16 samples into 3.*16 % 3"):
        trainer.train_step(regression_batches(1, batch_size=16)[0])


# ------------------------------------------------------- steps_per_execution


def test_train_steps_equals_sequential_train_step():
    data = regression_batches(4)
    one = make_regression_trainer(seed=2)
    for b in data:
        last = one.train_step(b)
    fused = make_regression_trainer(seed=2)
    stacked = fused.train_steps(data)
    assert fused.global_step == 4 and stacked["loss"].shape == (4,)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        one.train_state,
        fused.train_state,
    )
    np.testing.assert_allclose(float(last["loss"]), float(stacked["loss"][-1]), rtol=1e-6)


class _LogGrab(Callback):
    def __init__(self):
        self.logged: list[tuple[int, float]] = []

    def on_log(self, trainer, metrics, step):
        self.logged.append((step, metrics["loss"]))


@pytest.mark.parametrize("scan_unroll", [1, True])
def test_fit_with_steps_per_execution_logs_and_stops_on_the_same_steps(scan_unroll):
    # scan_unroll=True: padding rounds of a short call run and are dropped by selects.
    data = regression_batches(7)
    runs = {}
    for k in (1, 3):
        trainer = make_regression_trainer(seed=4, log_every_n_steps=4, steps_per_execution=k,
                                          scan_unroll=scan_unroll)
        rec = Recorder()
        grab = _LogGrab()
        trainer.fit(data, max_steps=17, max_epochs=None, callbacks=[rec, grab])
        runs[k] = (trainer, rec, grab.logged)
    (t1, _, l1), (t3, r3, l3) = runs[1], runs[3]
    assert t3.global_step == t1.global_step == 17
    assert t3.current_epoch == t1.current_epoch == 2 and t3.batches_seen_in_epoch == 3
    assert [s for s, _ in l3] == [s for s, _ in l1] == [4, 8, 12, 16, 17]
    np.testing.assert_allclose([v for _, v in l3], [v for _, v in l1], rtol=1e-5)
    starts = [c[1] for c in r3.calls if c[0] == "batch_start"]
    ends = [c[1] for c in r3.calls if c[0] == "batch_end"]
    assert starts == ends == list(range(17))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        t1.train_state["params"],
        t3.train_state["params"],
    )
    # Chunk sizes 3, 1 (to step 4), 3, 1, ... : few distinct shapes, few compilations.
    assert t3.trace_count <= 3


def test_an_unrolled_runner_skips_padding_rounds_without_a_conditional():
    # XLA:CPU runs a conv net's gradient inside a conditional ~25x slower than
    # under plain jit, unrolled or not (bench/trainer_overhead.py's conv rows).
    data = regression_batches(3)
    texts = {}
    for unroll in (1, True):  # (keys "rolled"/"unrolled": True == 1 as a dict key)
        trainer = make_regression_trainer(steps_per_execution=3, scan_unroll=unroll, nan_policy="off")
        lowered = trainer._runner(3).lower(
            trainer.train_state, trainer.frozen_states, None, tuple(data), static=(), n_active=jnp.int32(2),
            batch_fn=None,
        )
        texts["unrolled" if unroll is True else "rolled"] = lowered.as_text()
    assert "stablehlo.case" in texts["rolled"]  # the padding round is skipped by a conditional
    assert "stablehlo.case" not in texts["unrolled"]


def test_train_steps_rejects_different_static_entries():
    trainer = make_regression_trainer()
    a, b = regression_batches(2)
    with pytest.raises(ValueError, match="equal static"):
        trainer.train_steps([{**a, "flag": 1}, {**b, "flag": 2}])


# ------------------------------------------------------- lagged logging


class _LaggingLog(Callback):
    """A pure logger (``log_may_lag``): records what on_log got and where the trainer was."""

    log_may_lag = True

    def __init__(self):
        self.logged: list[tuple[int, float, int]] = []

    def on_log(self, trainer, metrics, step):
        self.logged.append((step, metrics["loss"], trainer.global_step))


@pytest.mark.parametrize("steps_per_execution", [1, 3, 5, 8])
def test_pure_loggers_get_the_same_logs_one_call_later(steps_per_execution):
    # With K = 5 or 8 and only pure loggers, one call spans logging steps (3, 6, 9):
    # each interval is still logged with its own steps' mean.
    data = regression_batches(5)
    runs = {}
    for lag_ok in (True, False):
        trainer = make_regression_trainer(seed=6, log_every_n_steps=3, steps_per_execution=steps_per_execution)
        logger = _LaggingLog()
        logger.log_may_lag = lag_ok
        trainer.fit(data, max_steps=11, max_epochs=None, callbacks=[logger])
        runs[lag_ok] = (trainer, logger.logged)
    (lagged_trainer, lagged), (_, direct) = runs[True], runs[False]
    # Same steps and values: 3, 6, 9 and the final partial interval at 11.
    assert [s for s, _, _ in lagged] == [s for s, _, _ in direct] == [3, 6, 9, 11]
    np.testing.assert_allclose([v for _, v, _ in lagged], [v for _, v, _ in direct], rtol=1e-6)
    # Without lag on_log runs before the next step; with lag, after the next call was
    # queued (the trainer is ahead), except for the final flush at the end of fit.
    assert all(at == s for s, _, at in direct)
    assert all(at > s for s, _, at in lagged[:-1]) and lagged[-1][2] == 11
    assert lagged_trainer.callback_metrics["loss"] == pytest.approx(lagged[-1][1])


def test_one_callback_that_acts_on_metrics_turns_the_lag_off():
    trainer = make_regression_trainer(seed=6, log_every_n_steps=2)
    logger, plain = _LaggingLog(), Recorder()  # Recorder keeps log_may_lag = False
    trainer.fit(regression_batches(4), max_steps=6, max_epochs=None, callbacks=[logger, plain])
    assert [(s, at) for s, _, at in logger.logged] == [(2, 2), (4, 4), (6, 6)]


def test_a_lagged_interval_is_still_logged_when_the_next_step_fails():
    good = regression_batches(2)
    data = [*good, *good, {"x": [1.0, 2.0]}]
    trainer = make_regression_trainer(seed=6, log_every_n_steps=2)
    logger = _LaggingLog()
    with pytest.raises(TypeError, match="must be an array"):
        trainer.fit(data, max_epochs=1, callbacks=[logger])
    assert [s for s, _, _ in logger.logged] == [2, 4]


def test_checkpoint_metadata_keeps_a_pending_interval_without_dispatching_events():
    from artifex_rl.checkpoint import dump_checkpoint

    class SaverLogger(_LaggingLog):
        def __init__(self):
            super().__init__()
            self.saved: list[dict] = []

        def on_train_batch_end(self, trainer, metrics, step):
            if step == 1:  # right after the logging step 2: its log is still pending
                before = len(self.logged)
                self.saved.append(dump_checkpoint(trainer).metadata)
                assert len(self.logged) == before, "assembling a checkpoint dispatched on_log"

    trainer = make_regression_trainer(seed=6, log_every_n_steps=2)
    cb = SaverLogger()
    trainer.fit(regression_batches(4), max_steps=4, max_epochs=None, callbacks=[cb])
    assert [s for s, _, _ in cb.logged] == [2, 4]
    (meta,) = cb.saved
    (closed,) = meta["metrics"]["closed"]
    assert closed["step"] == 2
    total, count = closed["sums"]["loss"]
    assert count == 2 and total / count == pytest.approx(cb.logged[0][1])
    assert meta["metrics"]["open"] == {}
