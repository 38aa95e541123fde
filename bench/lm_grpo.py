"""GRPO on a tiny LM: our GRPOTrainer vs a hand-fused pure-JAX loop, side by side in one process.

Three measurements, all on the ``lm-grpo`` recipe's task, model, pre-trained
policy and settings (``artifex_rl.recipes.lm``: 64 prompts x 8 samples per
step, Adam 1e-3, clip 0.2, beta 0.04, global-norm clip 1.0):

1. **Time to mean reward 0.9.** A hand-fused GRPO written here -- sampling
   with the KV cache, reward, group advantages, reference log-probs and the
   Adam update in ONE ``jax.jit``-ted function with donated state, plain
   pytrees, no trainer -- against ``GRPOTrainer.fit`` (online mode) over the
   same prompt batches with the same sampling keys. Both pull metrics to the
   host every ``log_every`` steps and stop at the first logged interval mean
   reward >= the target. Wall time counts from before the first call, so
   compilation is included; the steady per-step time is reported too. Runs
   alternate (fused, ours, ours, fused, ...) so machine load hits both alike.
2. **Sampler throughput** at completion length 32: ``bench/sampler_speed.py``
   (imported, not duplicated) on the recipe's model shape and GRPO batch.
3. **Where one GRPO iteration goes**: generation (sampling + reward),
   reference scoring and the update (policy forward + backward + Adam) as
   three separately jitted functions, timed alternately; the fused iteration
   for comparison.

    python bench/lm_grpo.py [--task digit_sum] [--repeats 2] [--cache-dir runs/bench_lm_grpo]

Absolute times on a shared 2-core CPU are noise; read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl.events import Callback
from artifex_rl.models.transformer import sample_with_cache
from artifex_rl.recipes.lm import GRPOSettings, LMSettings, PromptBatches, grpo_config, make_task, pretrain
from artifex_rl.rl import GRPOTrainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sampler_speed  # noqa: E402  (bench/sampler_speed.py, reused for the sampler numbers)


# --------------------------------------------------------------------------- #
# The hand-fused reference: one jitted function per GRPO iteration
# --------------------------------------------------------------------------- #
def completion_log_probs(graphdef, params, tokens: jax.Array, prompt_length: int) -> jax.Array:
    """``(B, N)`` log-probs of the completion tokens ``tokens[:, P:]`` under ``params``."""
    logits = nnx.merge(graphdef, params)(tokens)
    logp = jax.nn.log_softmax(logits[:, prompt_length - 1 : -1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, prompt_length:, None], axis=-1)[..., 0]


def make_fused_grpo(graphdef, task, s: GRPOSettings) -> tuple[Callable, optax.GradientTransformation]:
    """``iteration(params, opt_state, ref_params, prompts, conditions, key) -> (params, opt_state, metrics)``."""
    p, n, g = task.prompt_length, task.answer_length, s.num_generations
    tx = optax.chain(optax.clip_by_global_norm(s.max_grad_norm), optax.adam(s.learning_rate))

    def iteration(params, opt_state, ref_params, prompts, conditions, key):
        prompts = jnp.repeat(prompts, g, axis=0)
        conditions = jnp.repeat(conditions, g, axis=0)
        out = sample_with_cache(
            nnx.merge(graphdef, params),
            prompts,
            key,
            max_new_tokens=n,
            temperature=s.temperature,
            eos_id=task.tokenizer.eos_id,
            pad_id=task.tokenizer.pad_id,
        )
        mask, old = out.completion_mask[:, p:], out.log_probs[:, p:]
        rewards = task.reward_fn(out.tokens[:, p:], conditions, completion_mask=mask)
        grouped = rewards.reshape(-1, g)
        centred = grouped - grouped.mean(axis=1, keepdims=True)
        flat = grouped.max(axis=1, keepdims=True) == grouped.min(axis=1, keepdims=True)
        adv = jnp.where(flat, 0.0, centred / (grouped.std(axis=1, keepdims=True) + 1e-4)).reshape(-1, 1)
        ref = completion_log_probs(graphdef, ref_params, out.tokens, p)

        def loss_fn(params):
            logp = completion_log_probs(graphdef, params, out.tokens, p)
            ratio = jnp.exp(jnp.clip(logp - old, -20.0, 20.0))
            surrogate = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - s.clip_param, 1 + s.clip_param) * adv)
            d = jnp.minimum(ref - logp, 20.0)
            per_token = surrogate + s.beta * (jnp.exp(d) - d - 1.0)
            per_sequence = jnp.sum(per_token * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
            return jnp.mean(per_sequence)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (
            optax.apply_updates(params, updates),
            opt_state,
            {"mean_reward": jnp.mean(rewards), "loss": loss},
        )

    return jax.jit(iteration, donate_argnums=(0, 1)), tx


# --------------------------------------------------------------------------- #
# Time to target
# --------------------------------------------------------------------------- #
@dataclasses.dataclass
class RunResult:
    seconds_to_target: float | None
    steps_to_target: int | None
    first_call_seconds: float
    steady_ms_per_step: float


def _sample_key(run: int, step: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(1_000 + run), step)


def run_fused(
    graphdef, state, task, s, prompts: PromptBatches, run: int, target: float, log_every: int, max_steps: int
) -> RunResult:
    fused, tx = make_fused_grpo(graphdef, task, s)
    start = time.perf_counter()
    params = jax.tree.map(jnp.array, state)
    ref_params = jax.tree.map(jnp.array, state)
    opt_state = tx.init(params)
    buffer, log_times, first_call = [], [], None
    for step, batch in enumerate(prompts):
        if step >= max_steps:
            break
        params, opt_state, metrics = fused(
            params, opt_state, ref_params, batch["observations"], batch["conditions"], _sample_key(run, step)
        )
        buffer.append(metrics)
        if first_call is None:
            jax.block_until_ready(metrics)  # once: the compile time, like the trainer run's
            first_call = time.perf_counter() - start
        if (step + 1) % log_every == 0:
            mean_reward = float(np.mean([m["mean_reward"] for m in jax.device_get(buffer)]))
            buffer = []
            log_times.append((step + 1, time.perf_counter() - start))
            if mean_reward >= target:
                return RunResult(log_times[-1][1], step + 1, first_call, _steady_ms(log_times))
    return RunResult(None, None, first_call, _steady_ms(log_times))


class _StopAt(Callback):
    def __init__(self, target: float, start: float):
        self.target, self.start = target, start
        self.log_times: list[tuple[int, float]] = []
        self.reached: tuple[int, float] | None = None
        self.first_call: float | None = None

    def on_train_batch_end(self, trainer, metrics, step) -> None:
        if self.first_call is None:
            jax.block_until_ready(metrics)
            self.first_call = time.perf_counter() - self.start

    def on_log(self, trainer, metrics, step) -> None:
        self.log_times.append((step, time.perf_counter() - self.start))
        if self.reached is None and metrics["mean_reward"] >= self.target:
            self.reached = self.log_times[-1]
            trainer.should_stop = True


def run_ours(
    graphdef, state, task, s, prompts: PromptBatches, run: int, target: float, log_every: int, max_steps: int
) -> RunResult:
    start = time.perf_counter()
    model = nnx.merge(graphdef, jax.tree.map(jnp.array, state))
    trainer = GRPOTrainer(
        model,
        optax.adam(s.learning_rate),
        grpo_config(task, s, log_every, seed=run),
        reward_fn=task.reward_fn,
    )
    stop = _StopAt(target, start)
    # The same prompts and sampling keys as the fused run ("sample_key" seeds the online sampling).
    loader = ({**batch, "sample_key": _sample_key(run, step)} for step, batch in enumerate(prompts))
    trainer.fit(loader, max_steps=max_steps, callbacks=[stop])
    steps, seconds = stop.reached if stop.reached else (None, None)
    return RunResult(seconds, steps, stop.first_call, _steady_ms(stop.log_times))


def _steady_ms(log_times: list[tuple[int, float]]) -> float:
    """Per-step time between the first and the last log (compilation excluded)."""
    if len(log_times) < 2:
        return float("nan")
    (s0, t0), (s1, t1) = log_times[0], log_times[-1]
    return (t1 - t0) / (s1 - s0) * 1e3


# --------------------------------------------------------------------------- #
# Split of one iteration
# --------------------------------------------------------------------------- #
def iteration_split(graphdef, state, task, s: GRPOSettings, repeats: int) -> dict[str, float]:
    """Median ms of generation, reference scoring, update, and the fused iteration (each its own jit)."""
    p, n, g = task.prompt_length, task.answer_length, s.num_generations
    fused, tx = make_fused_grpo(graphdef, task, s)
    prompts, conditions = task.sample_prompts(jax.random.key(0), s.num_prompts)

    @jax.jit
    def generate(params, key):
        out = sample_with_cache(
            nnx.merge(graphdef, params),
            jnp.repeat(prompts, g, axis=0),
            key,
            max_new_tokens=n,
            temperature=s.temperature,
            eos_id=task.tokenizer.eos_id,
            pad_id=task.tokenizer.pad_id,
        )
        mask = out.completion_mask[:, p:]
        rewards = task.reward_fn(out.tokens[:, p:], jnp.repeat(conditions, g, axis=0), completion_mask=mask)
        return out.tokens, mask, out.log_probs[:, p:], rewards

    @jax.jit
    def reference(ref_params, tokens):
        return completion_log_probs(graphdef, ref_params, tokens, p)

    @jax.jit
    def update(params, opt_state, tokens, mask, old, ref, rewards):
        # The fused function's update alone (advantages included, they are a few flops).
        grouped = rewards.reshape(-1, g)
        centred = grouped - grouped.mean(axis=1, keepdims=True)
        flat = grouped.max(axis=1, keepdims=True) == grouped.min(axis=1, keepdims=True)
        adv = jnp.where(flat, 0.0, centred / (grouped.std(axis=1, keepdims=True) + 1e-4)).reshape(-1, 1)

        def loss_fn(params):
            logp = completion_log_probs(graphdef, params, tokens, p)
            ratio = jnp.exp(jnp.clip(logp - old, -20.0, 20.0))
            surrogate = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - s.clip_param, 1 + s.clip_param) * adv)
            d = jnp.minimum(ref - logp, 20.0)
            per_token = surrogate + s.beta * (jnp.exp(d) - d - 1.0)
            return jnp.mean(jnp.sum(per_token * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0))

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = jax.tree.map(jnp.array, state)
    opt_state = tx.init(params)
    tokens, mask, old, rewards = jax.block_until_ready(generate(params, jax.random.key(1)))
    ref = jax.block_until_ready(reference(params, tokens))
    jax.block_until_ready(update(params, opt_state, tokens, mask, old, ref, rewards))
    fused_params, fused_opt = jax.tree.map(jnp.array, params), tx.init(params)
    fused_params, fused_opt, m = fused(
        fused_params, fused_opt, params, prompts, conditions, jax.random.key(1)
    )
    jax.block_until_ready(m)

    times: dict[str, list[float]] = {"generation": [], "reference": [], "update": [], "fused": []}

    def timed(name, fn, *args):
        begin = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times[name].append(time.perf_counter() - begin)
        return out

    for r in range(repeats):
        key = jax.random.key(r + 2)
        tokens, mask, old, rewards = timed("generation", generate, params, key)
        ref = timed("reference", reference, params, tokens)
        timed("update", update, params, opt_state, tokens, mask, old, ref, rewards)
        fused_params, fused_opt, _ = timed(
            "fused", fused, fused_params, fused_opt, params, prompts, conditions, key
        )
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def sampler_numbers(task, batch: int, new_tokens: int, repeats: int) -> str:
    """Run bench/sampler_speed.py on the recipe's model shape; returns its report."""
    settings = LMSettings(task=task).model
    argv = [
        "sampler_speed.py",
        "--batch",
        str(batch),
        "--prompt",
        str(make_task(task).prompt_length),
        "--new",
        str(new_tokens),
        "--d-model",
        str(settings.d_model),
        "--layers",
        str(settings.num_layers),
        "--vocab",
        str(make_task(task).tokenizer.vocab_size),
        "--repeats",
        str(repeats),
    ]
    saved, sys.argv = sys.argv, argv
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            sampler_speed.main()
    finally:
        sys.argv = saved
    return buffer.getvalue()


# --------------------------------------------------------------------------- #
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digit_sum", choices=["digit_sum", "sort_digits"])
    parser.add_argument("--repeats", type=int, default=2, help="time-to-target runs per implementation")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--split-repeats", type=int, default=20)
    parser.add_argument("--sampler-batch", type=int, default=512)
    parser.add_argument("--sampler-repeats", type=int, default=10)
    parser.add_argument(
        "--cache-dir",
        default="runs/bench_lm_grpo/pretrained",
        help="pre-trained policy cache (shared with nothing else)",
    )
    parser.add_argument("--skip", nargs="*", default=(), choices=["target", "sampler", "split"])
    args = parser.parse_args()

    settings, grpo = LMSettings(task=args.task), GRPOSettings()
    task = make_task(args.task)
    model, info = pretrain(task, settings, seed=0, cache_dir=args.cache_dir)
    graphdef, state = nnx.split(model)
    print(
        f"task={args.task} model={dataclasses.asdict(settings.model)} pretrain={dataclasses.asdict(settings.pretrain)} "
        f"(cached={info['pretrain_cached']}) grpo={dataclasses.asdict(grpo)} backend={jax.default_backend()} "
        f"cpus={os.cpu_count()}"
    )

    if "target" not in args.skip:
        prompts = PromptBatches(task, grpo.num_prompts, args.max_steps, seed=1)
        results: dict[str, list[RunResult]] = {"fused": [], "ours": []}
        runners = {"fused": run_fused, "ours": run_ours}
        for r in range(args.repeats):
            order = ("fused", "ours") if r % 2 == 0 else ("ours", "fused")
            for name in order:
                res = runners[name](
                    graphdef, state, task, grpo, prompts, r, args.target, args.log_every, args.max_steps
                )
                results[name].append(res)
                print(f"  run {r} {name:>5}: {res}", flush=True)
        print(
            f"\n== time to logged mean reward >= {args.target} (compile included), median of {args.repeats}"
        )
        med = {}
        for name, rs in results.items():
            secs = [x.seconds_to_target for x in rs if x.seconds_to_target is not None]
            steps = [x.steps_to_target for x in rs if x.steps_to_target is not None]
            med[name] = {
                "seconds": statistics.median(secs) if secs else float("nan"),
                "steps": statistics.median(steps) if steps else float("nan"),
                "first": statistics.median(x.first_call_seconds for x in rs),
                "ms": statistics.median(x.steady_ms_per_step for x in rs),
            }
            print(
                f"{name:>6}: {med[name]['seconds']:6.1f} s  ({med[name]['steps']:.0f} steps, "
                f"reached in {len(secs)}/{len(rs)} runs)  first call {med[name]['first']:.1f} s  "
                f"steady {med[name]['ms']:.1f} ms/step"
            )
        print(
            f"ratio ours / fused, time to target:   {med['ours']['seconds'] / med['fused']['seconds']:.2f}x"
        )
        print(f"ratio ours / fused, steady step time: {med['ours']['ms'] / med['fused']['ms']:.2f}x")

    if "sampler" not in args.skip:
        print(f"\n== sampler throughput (bench/sampler_speed.py, batch {args.sampler_batch}, 32 new tokens)")
        print(sampler_numbers(args.task, args.sampler_batch, 32, args.sampler_repeats), end="")

    if "split" not in args.skip:
        split = iteration_split(graphdef, state, task, grpo, args.split_repeats)
        parts = ("generation", "reference", "update")
        total = sum(split[k] for k in parts)
        print(f"\n== one GRPO iteration, separately jitted parts (median of {args.split_repeats})")
        for k in parts:
            print(f"{k:>11}: {split[k]:7.2f} ms  {100 * split[k] / total:5.1f}%")
        print(f"{'sum':>11}: {total:7.2f} ms;  fused in one call: {split['fused']:.2f} ms")


if __name__ == "__main__":
    main()
