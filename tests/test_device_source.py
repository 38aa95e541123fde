"""fit() fusing a device rollout source with the update (steps_per_execution > 1).

The fused run must be the sequential run: the same parameters, optimizer
state, environment state, logged metrics and hook calls, with one compile
whatever the chunk sizes.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx

from artifex_rl.device_source import is_device_batch_source
from artifex_rl.envs import GymnaxRolloutSource
from artifex_rl.events import Callback
from artifex_rl.models import ActorCritic, MLPPolicy
from artifex_rl.rl import PPOConfig, PPOTrainer, REINFORCEConfig, REINFORCETrainer

B, T = 4, 16


class Record(Callback):
    def __init__(self) -> None:
        self.starts: list[tuple[object, int]] = []
        self.ends: list[tuple[int, float]] = []
        self.logs: list[tuple[int, dict]] = []
        self.epochs: list[int] = []

    def on_train_batch_start(self, trainer, batch, step) -> None:
        self.starts.append((batch, step))

    def on_train_batch_end(self, trainer, metrics, step) -> None:
        self.ends.append((step, float(metrics["loss"])))

    def on_log(self, trainer, metrics, step) -> None:
        self.logs.append((step, dict(metrics)))

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        self.epochs.append(epoch)


def make(steps_per_execution: int, iterations_per_epoch: int | None = None, scan_unroll: int | bool = 1):
    model = ActorCritic(4, 2, hidden=(16, 16), rngs=nnx.Rngs(3))
    config = PPOConfig(
        update_epochs=2, num_minibatches=2, log_every_n_steps=5, seed=1, steps_per_execution=steps_per_execution,
        scan_unroll=scan_unroll,
    )
    trainer = PPOTrainer(model, optax.adam(3e-3), config)
    source = GymnaxRolloutSource(
        "CartPole-v1", trainer, num_envs=B, num_steps=T, seed=2, iterations_per_epoch=iterations_per_epoch
    )
    return trainer, source


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6) -> None:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_rollout_source_speaks_the_device_protocol():
    trainer, source = make(1)
    assert is_device_batch_source(source)
    assert not is_device_batch_source([{"x": np.zeros(3)}])
    # The same function object for the same graphdef: it is a static argument of the fused call.
    assert source.device_batch_fn(trainer.graphdef) is source.device_batch_fn(trainer.graphdef)


def test_fused_fit_equals_the_sequential_fit_with_one_compile():
    # log every 5 with 3 per call: chunks of 3, 2 (log step), 3, 2 ... and 1 at max_steps=11,
    # so full and partial chunks both run.
    runs = {}
    for k in (1, 3):
        trainer, source = make(k)
        record = Record()
        trainer.fit(source, max_steps=11, max_epochs=None, callbacks=[record])
        runs[k] = (trainer, source, record)

    (seq, seq_source, seq_rec), (fused, fused_source, fused_rec) = runs[1], runs[3]
    assert fused.global_step == seq.global_step == 11
    assert fused_source.iterations == seq_source.iterations == 11
    assert_trees_close(fused.train_state["params"], seq.train_state["params"])
    assert_trees_close(fused.train_state["opt_state"], seq.train_state["opt_state"])
    assert_trees_close(fused_source.source_state["carry"], seq_source.source_state["carry"])
    np.testing.assert_array_equal(fused_source.source_state["key"], seq_source.source_state["key"])
    # The model object follows the fused calls too.
    assert_trees_close(nnx.to_pure_dict(nnx.state(fused.model, nnx.Param)), fused.train_state["params"])

    assert [s for s, _ in fused_rec.logs] == [s for s, _ in seq_rec.logs] == [5, 10, 11]
    for (_, got), (_, want) in zip(fused_rec.logs, seq_rec.logs, strict=True):
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert "episode_return" in fused_rec.logs[-1][1]

    # Hooks: every step once, in order; the fused start hook has no batch yet.
    assert [s for _, s in fused_rec.starts] == list(range(11))
    assert all(batch is None for batch, _ in fused_rec.starts)
    assert all(batch is not None for batch, _ in seq_rec.starts)
    assert [s for s, _ in fused_rec.ends] == list(range(11))
    np.testing.assert_allclose([x for _, x in fused_rec.ends], [x for _, x in seq_rec.ends], rtol=1e-4, atol=1e-6)

    # Chunks of 3, 2 and 1 all ran through one compiled program, traced once; more
    # chunks of every size trace nothing new. (The source's counter is shared with
    # the sequential run's source: equal settings share compiled code.)
    assert fused.trace_count == 1
    traces_before = fused_source.trace_count
    fused.fit(fused_source, max_steps=20, max_epochs=None)
    assert fused.global_step == 20
    assert fused.trace_count == 1 and fused_source.trace_count == traces_before


def test_an_unrolled_fused_call_drops_its_padding_rounds_and_their_env_steps():
    # Fully unrolled, a call shorter than K runs its padding rounds and selects
    # their results away (no conditional): parameters, optimizer and environment
    # state must be those of the rounds that count.
    runs = {}
    for k, unroll in ((1, 1), (3, True)):  # the reference rolled: one unrolled compile only
        trainer, source = make(k, scan_unroll=unroll)
        trainer.fit(source, max_steps=4, max_epochs=None)  # chunks of 3 and 1 (two padding rounds)
        runs[k] = (trainer, source)
    (seq, seq_source), (fused, fused_source) = runs[1], runs[3]
    assert fused.global_step == seq.global_step == 4 and fused_source.iterations == 4
    assert_trees_close(fused.train_state["params"], seq.train_state["params"])
    assert_trees_close(fused.train_state["opt_state"], seq.train_state["opt_state"])
    assert_trees_close(fused_source.source_state["carry"], seq_source.source_state["carry"])
    np.testing.assert_array_equal(fused_source.source_state["key"], seq_source.source_state["key"])


class LaggingRecord(Record):
    """A pure logger: fit may run one call across several logging steps."""

    log_may_lag = True


def test_a_call_spanning_logging_steps_logs_each_interval_as_the_sequential_fit():
    # log every 5 with 8 per call and only pure loggers: calls of 8, 3 (max_steps 11),
    # each closing the intervals at 5 and 10 inside it.
    runs = {}
    for k, recorder in ((1, Record), (8, LaggingRecord)):
        trainer, source = make(k)
        record = recorder()
        trainer.fit(source, max_steps=11, max_epochs=None, callbacks=[record])
        runs[k] = (trainer, record)
    (seq, seq_rec), (fused, fused_rec) = runs[1], runs[8]
    assert fused.global_step == seq.global_step == 11
    assert_trees_close(fused.train_state["params"], seq.train_state["params"])
    assert [s for s, _ in fused_rec.logs] == [s for s, _ in seq_rec.logs] == [5, 10, 11]
    for (_, got), (_, want) in zip(fused_rec.logs, seq_rec.logs, strict=True):
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert [s for s, _ in fused_rec.ends] == list(range(11))
    np.testing.assert_allclose([x for _, x in fused_rec.ends], [x for _, x in seq_rec.ends], rtol=1e-4, atol=1e-6)


def test_fused_fit_respects_the_source_epoch_length():
    seq, seq_source = make(1, iterations_per_epoch=4)
    fused, fused_source = make(3, iterations_per_epoch=4)
    recs = []
    for trainer, source in ((seq, seq_source), (fused, fused_source)):
        rec = Record()
        trainer.fit(source, max_epochs=2, callbacks=[rec])
        recs.append(rec)
        assert trainer.global_step == 8 and trainer.current_epoch == 2
        assert source.iterations == 8
    assert recs[0].epochs == recs[1].epochs == [0, 1]
    assert_trees_close(fused.train_state["params"], seq.train_state["params"])


def test_state_dict_taken_before_a_fused_fit_stays_readable():
    trainer, source = make(3)
    before = source.state_dict()  # live device arrays, as a checkpoint would read them
    trainer.fit(source, max_steps=4, max_epochs=None)
    leaves = [np.asarray(x) for x in jax.tree.leaves(before)]  # raises if they were donated
    assert all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f")
    assert not np.array_equal(np.asarray(before["carry"]["obs"]), np.asarray(source.source_state["carry"]["obs"]))


def test_a_source_of_another_trainer_is_read_like_any_dataloader():
    # The source acts with trainer A's (fixed) policy; B learns from those batches.
    results = []
    for k in (1, 3):
        acting, source = make(1)
        learner, _ = make(k)
        learner.fit(source, max_steps=5, max_epochs=None)
        assert source.iterations == 5
        results.append(learner.train_state["params"])
    assert_trees_close(results[0], results[1])


def test_an_epoch_cut_short_continues_with_its_remaining_batches():
    # max_steps stops mid-epoch; the next fit finishes that epoch, fused or not.
    states = []
    for k in (1, 3):
        trainer, source = make(k, iterations_per_epoch=4)
        trainer.fit(source, max_steps=2, max_epochs=None)
        assert trainer.batches_seen_in_epoch == 2
        trainer.fit(source, max_epochs=1)
        assert trainer.global_step == 4 and trainer.current_epoch == 1 and source.iterations == 4
        states.append(trainer.train_state["params"])
    assert_trees_close(states[0], states[1])


def test_fused_reinforce_with_a_policy_only_model_equals_the_sequential_run():
    params = []
    for k in (1, 4):
        model = MLPPolicy(4, 2, hidden=(16, 16), rngs=nnx.Rngs(5))
        config = REINFORCEConfig(gamma=0.99, log_every_n_steps=4, seed=3, steps_per_execution=k)
        trainer = REINFORCETrainer(model, optax.adam(3e-3), config)
        source = GymnaxRolloutSource("CartPole-v1", trainer, num_envs=B, num_steps=T, seed=4)
        assert not source.actor_critic
        trainer.fit(source, max_steps=6, max_epochs=None)
        assert trainer.global_step == 6 and source.iterations == 6
        params.append(trainer.train_state["params"])
    assert_trees_close(params[0], params[1])
