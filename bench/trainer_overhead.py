"""What ``Trainer.fit`` and the standard callbacks cost over a hand-written ``jax.jit`` loop.

Model: MLP regression (in 16 -> 64 -> 64 -> 1, ReLU), batch 64, Adam. Both
sides train on the same pre-built device batches:

* ``baseline``: params and optax state as plain pytrees, one ``jax.jit`` step
  with both donated, a Python ``for`` loop, one ``block_until_ready`` at the end.
* ``fit``: ``Trainer.fit`` (log every 10 steps) with
  (a) no callbacks, (b) ``ProgressBarCallback`` + ``MetricsLogger``,
  (c) (b) + ``ModelCheckpoint`` every ``--ckpt-every`` (100) steps (async save);
  and each of them again with ``steps_per_execution=10`` (ten batches per
  compiled call, a ``lax.scan``), which pays the Python loop and the
  runtime's per-call cost once per ten steps.

On XLA:CPU a small program runs inline in the dispatching thread, so every
microsecond of Python per step (hooks, model write-back, batch checks) adds
to the step; only fusing steps removes it. In (a) and (b) every callback is a
pure logger, so ``fit`` reads each interval's metrics after the next step is
queued (``Callback.log_may_lag``); ``ModelCheckpoint`` in (c) turns that off.

Each variant keeps one trainer (compiled once, warmed up); the variants run
interleaved, ``--reps`` times each, and the median time per step is compared.
Then, to explain the ratios: the training-thread cost of each callback's
``on_log`` and of one async checkpoint save (and how long orbax takes to
commit it); one-off costs at the end of training (the MetricsLogger PNG, the
parameter overview, one synchronous save); with ``--breakdown``, the parts
of ``fit``'s core (compiled step, grad-norm variants, metric pull); and a small
conv net with K = 1, and K = 4 in a rolled vs unrolled scan, so the XLA:CPU
conv-in-scan trap (jax#12868) stays visible.

Run: ``python bench/trainer_overhead.py [--steps 2000] [--reps 5] [--ckpt-every 100] [--breakdown] [--profile]``.
Timings on a shared CPU are noisy; only the ratios taken in one run mean much.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl import Trainer, TrainerConfig
from artifex_rl.callbacks import CheckpointConfig, MetricsLogger, ModelCheckpoint, ProgressBarCallback
from artifex_rl.checkpointing import TrainerCheckpointer
from artifex_rl.core.runner import split_batch

IN_DIM, HIDDEN, BATCH, N_BATCHES = 16, 64, 64, 50


class MLP(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(IN_DIM, HIDDEN, rngs=rngs)
        self.l2 = nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
        self.l3 = nnx.Linear(HIDDEN, 1, rngs=rngs)

    def __call__(self, x):
        return self.l3(jax.nn.relu(self.l2(jax.nn.relu(self.l1(x)))))


class MSETrainer(Trainer):
    def compute_loss(self, model, batch, rng):
        return jnp.mean((model(batch["x"]) - batch["y"]) ** 2), {}


def make_batches() -> list[dict[str, jax.Array]]:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(IN_DIM, 1)).astype(np.float32)
    batches = []
    for _ in range(N_BATCHES):
        x = rng.normal(size=(BATCH, IN_DIM)).astype(np.float32)
        batches.append({"x": jax.device_put(x), "y": jax.device_put(x @ w)})
    return batches


def _norm_per_leaf(grads) -> jax.Array:
    return optax.tree.norm(grads)  # what Trainer reports as grad_norm: one reduction per leaf


def _norm_fused(grads) -> jax.Array:
    flat = jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(grads)])
    return jnp.sqrt(jnp.sum(jnp.square(flat)))  # one reduction over all leaves


def make_baseline(batches, grad_norm: Callable | None = None) -> Callable[[int], float]:
    """A hand-written loop; returns ``run(steps) -> seconds``.

    ``grad_norm``: also compute and return the gradient norm (as the trainer does).
    """
    model = MLP(rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    tx = optax.adam(1e-3)
    state = {"params": params, "opt": tx.init(params)}

    def loss_fn(params, batch):
        m = nnx.merge(graphdef, params)  # trace time only, as in the trainer
        return jnp.mean((m(batch["x"]) - batch["y"]) ** 2)

    def step(params, opt, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        metrics = {"loss": loss} if grad_norm is None else {"loss": loss, "grad_norm": grad_norm(grads)}
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, metrics

    step = jax.jit(step, donate_argnums=(0, 1))

    def run(steps: int) -> float:
        params, opt = state["params"], state["opt"]
        start = time.perf_counter()
        loss = None
        for i in range(steps):
            params, opt, loss = step(params, opt, batches[i % N_BATCHES])
        jax.block_until_ready((params, opt, loss))
        elapsed = time.perf_counter() - start
        state["params"], state["opt"] = params, opt
        return elapsed

    run(20)  # compile
    return run


def make_fit(
    batches, callbacks_fn: Callable[[str], list], steps_per_execution: int = 1, model_fn=None, **config
) -> Callable[[int], float]:
    """One trainer (compiled once); ``run(steps)`` continues training for ``steps`` more steps."""
    model = (model_fn or MLP)(rngs=nnx.Rngs(0))
    config = TrainerConfig(log_every_n_steps=10, steps_per_execution=steps_per_execution, **config)
    trainer = MSETrainer(model, optax.adam(1e-3), config)
    tmp = tempfile.mkdtemp(prefix="artifex_bench_")
    counter = [0]

    def run(steps: int) -> float:
        counter[0] += 1
        callbacks = callbacks_fn(f"{tmp}/run{counter[0]}")
        start = time.perf_counter()
        trainer.fit(batches, max_steps=trainer.global_step + steps, max_epochs=None, callbacks=callbacks)
        jax.block_until_ready(trainer.train_state)
        return time.perf_counter() - start

    run(20)  # compile and warm the callbacks' imports
    return run


class ConvNet(nnx.Module):
    """A small conv net on 8x8x1 inputs: the shape of the digits models (conv-in-scan trap)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.c1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.c2 = nnx.Conv(16, 16, (3, 3), rngs=rngs)
        self.out = nnx.Linear(8 * 8 * 16, 1, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.c2(jax.nn.relu(self.c1(x))))
        return self.out(h.reshape(h.shape[0], -1))


def conv_batches() -> list[dict[str, jax.Array]]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(N_BATCHES):
        x = rng.normal(size=(BATCH, 8, 8, 1)).astype(np.float32)
        out.append({"x": jax.device_put(x), "y": jax.device_put(x.mean(axis=(1, 2)))})
    return out


def conv_section(steps: int, reps: int) -> None:
    """The XLA:CPU conv-in-scan trap (jax#12868), kept visible: a conv net's step under plain
    jit (K = 1), and K = 4 steps per call in a rolled vs an unrolled ``lax.scan``."""
    batches = conv_batches()
    variants = {
        "conv: fit, one step per call": make_fit(batches, no_callbacks, model_fn=ConvNet),
        "conv: fit, K=4 in a rolled scan": make_fit(batches, no_callbacks, 4, model_fn=ConvNet),
        "conv: fit, K=4 unrolled (scan_unroll=True)": make_fit(
            batches, no_callbacks, 4, model_fn=ConvNet, scan_unroll=True
        ),
    }
    times = {name: [] for name in variants}
    for _ in range(reps):
        for name, run in variants.items():
            times[name].append(run(steps) / steps)
    first = statistics.median(next(iter(times.values())))
    print("conv net (the scan trap):")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:45s} {med * 1e6:8.1f} us/step   ratio {med / first:5.3f}")


def no_callbacks(run_dir: str) -> list:
    return []


def bar_and_logger(run_dir: str) -> list:
    return [
        ProgressBarCallback(file=io.StringIO(), disable=False),  # renders (into memory)
        MetricsLogger(run_dir, plot=False, parameter_overview=False),
    ]


def bar_logger_checkpoint(every: int) -> Callable[[str], list]:
    def make(run_dir: str) -> list:
        checkpoint = ModelCheckpoint(
            CheckpointConfig(f"{run_dir}/ckpt", every_n_train_steps=every, async_save=True)
        )
        return [*bar_and_logger(run_dir), checkpoint]

    return make


def _median_us(fn: Callable[[], float], reps: int) -> float:
    return statistics.median(fn() for _ in range(reps)) * 1e6


def core_breakdown(batches, steps: int, reps: int) -> None:
    """Where fit's time goes without callbacks: the compiled step, the per-step Python, the logging pull."""
    model = MLP(rngs=nnx.Rngs(0))
    trainer = MSETrainer(model, optax.adam(1e-3), TrainerConfig(log_every_n_steps=10))
    trainer.fit(batches, max_steps=20, max_epochs=None)

    def compiled_step_only() -> float:
        start = time.perf_counter()
        for i in range(steps):
            arrays, static = split_batch(batches[i % N_BATCHES])
            trainer.train_state, _, _ = trainer._compiled_fns()["step"](
                trainer.train_state, trainer.frozen_states, arrays, static
            )
        jax.block_until_ready(trainer.train_state)
        return (time.perf_counter() - start) / steps

    ready = [trainer.train_step(batches[0]) for _ in range(10)]
    jax.block_until_ready(ready)

    def flush_metrics() -> float:  # per step, metrics already computed (no waiting on the device)
        start = time.perf_counter()
        for _ in range(steps // 10):
            for m in ready:
                trainer.metrics.add(m)
            trainer.metrics.close_interval(trainer.global_step)
            trainer.metrics.take_pending()
        return (time.perf_counter() - start) / steps

    variants = {
        "hand-written step": make_baseline(batches),
        "  + grad_norm as optax.tree.norm (per leaf)": make_baseline(batches, _norm_per_leaf),
        "  + grad_norm as one fused reduction": make_baseline(batches, _norm_fused),
    }
    rows = {name: _median_us(lambda run=run: run(steps) / steps, reps) for name, run in variants.items()}
    rows["the compiled step alone (step + dispatch)"] = _median_us(compiled_step_only, reps)
    rows["the metric aggregator alone (per step, values ready)"] = _median_us(flush_metrics, reps)
    print("core breakdown (median us per step):")
    for name, us in rows.items():
        print(f"  {name:55s} {us:8.1f}")


def callback_costs(batches) -> dict[str, float]:
    """Training-thread time of one on_log per callback, and of one async ModelCheckpoint save."""
    trainer = MSETrainer(MLP(rngs=nnx.Rngs(0)), optax.adam(1e-3), TrainerConfig(log_every_n_steps=10))
    trainer.fit(batches, max_steps=20, max_epochs=None)
    trainer.fitting, trainer.max_steps, trainer.max_epochs = True, 10**9, None  # as inside fit
    metrics = {"loss": 0.123, "grad_norm": 1.5}
    costs = {}
    tmp = tempfile.mkdtemp(prefix="artifex_bench_")
    for name, callback in (
        ("ProgressBarCallback.on_log (bar drawn)", ProgressBarCallback(file=io.StringIO(), disable=False)),
        ("MetricsLogger.on_log", MetricsLogger(tmp, plot=False, parameter_overview=False)),
    ):
        callback.on_train_begin(trainer)
        start = time.perf_counter()
        for i in range(1, 1001):
            callback.on_log(trainer, metrics, i * 10)
        costs[name] = (time.perf_counter() - start) / 1000
        callback.on_train_end(trainer)
    trainer.fitting = False

    checkpointer = TrainerCheckpointer(async_save=True)
    blocking, total = [], []
    for i in range(10):
        start = time.perf_counter()
        checkpointer.save(trainer, f"{tmp}/ckpt{i}")
        blocking.append(time.perf_counter() - start)
        checkpointer.wait_until_finished()
        total.append(time.perf_counter() - start)
    checkpointer.close()
    costs["async save: training-thread part (host copy + JSON)"] = statistics.median(blocking)
    costs["async save: until committed (writer thread, orbax)"] = statistics.median(total)
    return costs


def one_off_costs(batches) -> dict[str, float]:
    """End-of-training work that does not scale with steps."""
    tmp = tempfile.mkdtemp(prefix="artifex_bench_")
    trainer = MSETrainer(MLP(rngs=nnx.Rngs(0)), optax.adam(1e-3), TrainerConfig(log_every_n_steps=10))
    logger = MetricsLogger(tmp, plot=True, parameter_overview=True)
    trainer.fit(batches, max_steps=200, max_epochs=None, callbacks=[logger])
    start = time.perf_counter()
    logger._write_plot(logger.rows())
    plot = time.perf_counter() - start
    start = time.perf_counter()
    logger._write_parameter_overview(trainer)
    overview = time.perf_counter() - start
    start = time.perf_counter()
    trainer.save_checkpoint(f"{tmp}/sync_ckpt")
    sync_save = time.perf_counter() - start
    return {"metrics.png": plot, "parameter overview": overview, "one synchronous checkpoint": sync_save}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--ckpt-every", type=int, default=100, help="ModelCheckpoint interval of (c)")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of fit's core loop")
    parser.add_argument("--profile", action="store_true", help="cProfile one run of each fit variant")
    parser.add_argument("--conv-steps", type=int, default=200, help="steps of the conv-net section (0: skip)")
    args = parser.parse_args()

    batches = make_batches()
    variants = {
        "baseline (hand-written jit loop)": make_baseline(batches),
        "(a) fit, no callbacks": make_fit(batches, no_callbacks),
        "(b) fit + progress bar + metrics logger": make_fit(batches, bar_and_logger),
        f"(c) (b) + ModelCheckpoint every {args.ckpt_every} steps": make_fit(
            batches, bar_logger_checkpoint(args.ckpt_every)
        ),
        "(a-off) (a) with nan_policy='off' (no finiteness check)": make_fit(batches, no_callbacks, nan_policy="off"),
        "(a10) (a) with steps_per_execution=10": make_fit(batches, no_callbacks, 10),
        "(a10-off) (a10) with nan_policy='off'": make_fit(batches, no_callbacks, 10, nan_policy="off"),
        "(b10) (b) with steps_per_execution=10": make_fit(batches, bar_and_logger, 10),
        "(c10) (c) with steps_per_execution=10": make_fit(batches, bar_logger_checkpoint(args.ckpt_every), 10),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.reps):
        for name, run in variants.items():  # interleaved: drifts in machine load hit all alike
            times[name].append(run(args.steps) / args.steps)

    base = statistics.median(times["baseline (hand-written jit loop)"])
    print(f"{args.steps} steps x {args.reps} reps, median time per step (backend: {jax.default_backend()})")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:45s} {med * 1e6:8.1f} us/step   ratio {med / base:5.3f}   "
              f"(min {min(ts) * 1e6:.1f}, max {max(ts) * 1e6:.1f})")  # fmt: skip
    print("callback costs on the training thread:")
    for name, seconds in callback_costs(batches).items():
        print(f"  {name:55s} {seconds * 1e6:10.1f} us")
    print("one-off costs (not per step):")
    for name, seconds in one_off_costs(batches).items():
        print(f"  {name:55s} {seconds * 1e3:10.1f} ms")
    if args.conv_steps:
        conv_section(args.conv_steps, args.reps)
    if args.breakdown:
        core_breakdown(batches, min(args.steps, 1000), args.reps)

    if args.profile:
        for name, run in list(variants.items())[1:]:
            profiler = cProfile.Profile()
            profiler.enable()
            run(args.steps)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
            print(f"\n=== cProfile: {name} ===\n{out.getvalue()}")


if __name__ == "__main__":
    main()
