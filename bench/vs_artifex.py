"""Our RL trainers against the seeds' library (``avitai-artifex`` 0.1.3) on one tiny causal LM.

Runs in the bench-only venv that ``make bench`` creates (``.bench-envs/artifex``:
avitai-artifex pulls TensorFlow, so it is never a dependency of ours) with
this checkout on ``PYTHONPATH``, so both libraries run in one process on the
same model, the same batch and the same hyper-parameters:

* model (the seeds' style): token embedding (vocab 64, width 128), a causal
  running mean over positions, two dense layers; batch 64 sequences of 32
  tokens, the first 8 a prompt; groups of 4 for GRPO; Adam 1e-3;
  REINFORCE gamma 0.99 with normalised returns and entropy 0.01; GRPO clip
  0.2, beta 0.04 with a frozen reference, entropy 0.01; DPO beta 0.1 with a
  frozen reference, 64 pairs; PPO (the model with a value head) one update on
  a given rollout (old log-probs and values given, no reference), clip 0.2,
  value 0.5, entropy 0.01, global-norm clip 0.5; their PPO takes token
  advantages and returns precomputed, so it gets ours (GAE 0.99/0.95).
* theirs as shipped: ``trainer.train_step(batch)`` (eager ``nnx.value_and_grad``
  and ``optimizer.update``); theirs jitted: the loss from
  ``trainer.create_loss_fn()`` with the gradient and the update under one
  ``nnx.jit``; the floor (``bench/floors.py``): a hand-written donated
  ``jax.jit`` step of our loss with the fewest forward passes; ours: ``trainer.train_step(batch)`` and ``trainer.fit`` over
  the same batch repeated (defaults: NaN check on, one step per call).

Timed interleaved in rounds (every variant sees the same machine load); the
table gives steps/s (median over rounds) and ratios. The losses are printed
side by side at the same parameters where the two definitions agree, and the
places where they differ on purpose are listed in ``docs/benchmarks.md``.

    .bench-envs/artifex/bin/python bench/vs_artifex.py [--steps 30 --rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
warnings.filterwarnings("ignore")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from _anchor_lm import (  # noqa: E402
    BATCH,
    BETA_DPO,
    BETA_GRPO,
    CLIP,
    ENTROPY,
    GROUP,
    LR,
    PROMPT,
    SEQ,
    AnchorLM,
    AnchorValueLM,
    completion_log_probs,
    completion_values,
    data,
)
from _results import markdown_table, save  # noqa: E402
from flax import nnx  # noqa: E402
from floors import floor_batch, make_floor, make_ours  # noqa: E402

# ------------------------------------------------------------------ theirs


def theirs(algo: str, model, ref, d):
    from artifex.generative_models.training.rl import configs as c
    from artifex.generative_models.training.rl import dpo, grpo, ppo, reinforce
    from artifex.generative_models.training.rl.types import (
        GeneratedSequenceBatch,
        GroupRolloutBatch,
        PreferenceBatch,
        SequenceRolloutBatch,
    )

    opt = nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param)
    seqs, mask = jnp.asarray(d["sequences"]), jnp.asarray(d["response_mask"])
    if algo == "REINFORCE":
        trainer = reinforce.REINFORCETrainer(model, opt, c.REINFORCEConfig(entropy_coeff=ENTROPY))
        batch = SequenceRolloutBatch(sequence_batch=GeneratedSequenceBatch.from_sequences(
            seqs, rewards=jnp.asarray(d["rewards"]), response_mask=mask))
    elif algo == "GRPO":
        trainer = grpo.GRPOTrainer(model, opt, c.GRPOConfig(num_generations=GROUP, clip_param=CLIP,
                                                            beta=BETA_GRPO, entropy_coeff=ENTROPY), ref)
        old = jnp.zeros((BATCH, SEQ - 1)).at[:, PROMPT - 1:].set(completion_log_probs(model, seqs))
        batch = GroupRolloutBatch(rollout=SequenceRolloutBatch(
            sequence_batch=GeneratedSequenceBatch.from_sequences(seqs, rewards=jnp.asarray(d["rewards"]),
                                                                 response_mask=mask),
            old_log_probs=old), group_size=GROUP)
    elif algo == "PPO":
        # Their PPO takes token advantages and returns already computed: give it ours (the shaped
        # rewards, GAE and whitening of artifex_rl.rl.ppo_tokens at kl_coeff 0), placed on the
        # (B, SEQ - 1) next-token grid.
        from artifex_rl.rl.ppo_tokens import kl_shaped_rewards, masked_token_gae

        trainer = ppo.PPOTrainer(model, opt, c.PPOConfig(clip_param=CLIP, entropy_coeff=ENTROPY))
        old, values = completion_log_probs(model, seqs), completion_values(model, seqs)
        done = jnp.ones_like(old)
        adv = masked_token_gae(kl_shaped_rewards(jnp.asarray(d["rewards"]), old, old, done, 0.0), values, done,
                               0.99, 0.95)
        grid = lambda x: jnp.zeros((BATCH, SEQ - 1)).at[:, PROMPT - 1:].set(x)  # noqa: E731
        batch = SequenceRolloutBatch(
            sequence_batch=GeneratedSequenceBatch.from_sequences(seqs, rewards=jnp.asarray(d["rewards"]),
                                                                 response_mask=mask),
            old_log_probs=grid(old), returns=grid(adv + values), advantages=grid(adv))
    else:
        trainer = dpo.DPOTrainer(model, ref, opt, c.DPOConfig(beta=BETA_DPO))
        rej = jnp.asarray(d["rejected"]).at[:, :PROMPT].set(seqs[:, :PROMPT])
        batch = PreferenceBatch(chosen=GeneratedSequenceBatch.from_sequences(seqs, response_mask=mask),
                                rejected=GeneratedSequenceBatch.from_sequences(rej, response_mask=mask))
    loss_fn = trainer.create_loss_fn()

    @nnx.jit
    def jitted(model, opt, batch):
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
        opt.update(model, grads)
        return loss

    def shipped():
        loss, _ = trainer.train_step(batch)
        return loss

    return shipped, lambda: jitted(model, opt, batch), lambda: trainer.compute_loss(batch)[0]


# ------------------------------------------------------------------ ours


def ours(algo: str, model, d, ref_log_probs=None):
    """Our trainer and batch (``bench/floors.py``'s ``make_ours``, defaults) and its step / fit callables."""
    trainer, batch = make_ours(algo, model, d)
    if ref_log_probs is not None:  # DPO with the reference scored once, outside the step
        batch = batch | {"ref_chosen_log_probs": ref_log_probs[0], "ref_rejected_log_probs": ref_log_probs[1]}

    def step():
        return trainer.train_step(batch)

    def fit(n):
        # max_steps counts earlier fit calls, so each call runs n more steps.
        trainer.fit([batch] * n, max_steps=trainer.global_step + n)

    return step, fit, trainer, batch


def timed(fn, n: int) -> float:
    """Seconds per call of ``fn`` over ``n`` calls, results waited for."""
    jax.block_until_ready(fn())
    start = time.perf_counter()
    out = None
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algos", nargs="+", default=["REINFORCE", "GRPO", "DPO", "PPO"])
    parser.add_argument("--steps", type=int, default=30, help="steps per timed round (shipped: a third)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import artifex  # noqa: F401  (fails early outside the bench venv)

    d = data()
    rows, agree = [], []
    for algo in args.algos:
        model_class = AnchorValueLM if algo == "PPO" else AnchorLM
        make = lambda s=0, cls=model_class: cls(nnx.Rngs(s))  # noqa: E731
        shipped, jitted, their_loss = theirs(algo, make(), make(), d)
        step, fit, trainer, batch = ours(algo, make(), d)
        floor = make_floor(algo, make(), floor_batch(algo, make(), d))
        # The two losses at the same initial parameters (ours: the first step's, taken before its update).
        agree.append({"algorithm": algo, "their loss": float(their_loss()), "our loss": float(step()["loss"])})
        fit(2)  # compile the fit path once
        fit_pre = None
        if algo == "DPO":  # TRL's precompute_ref_log_probs: the reference scored once per dataset, not per step
            seqs = jnp.asarray(d["sequences"])
            rej = jnp.asarray(d["rejected"]).at[:, :PROMPT].set(seqs[:, :PROMPT])
            _, fit_pre, pre_trainer, _ = ours(algo, make(), d, ref_log_probs=(
                completion_log_probs(make(), seqs).sum(-1), completion_log_probs(make(), rej).sum(-1)))
            fit_pre(2)
        times = {"theirs shipped": [], "theirs jitted": [], "floor": [], "ours train_step": [], "ours fit": []}
        for _ in range(args.rounds):
            times["theirs shipped"].append(timed(shipped, max(1, args.steps // 3)))
            times["theirs jitted"].append(timed(jitted, args.steps))
            times["floor"].append(timed(floor, args.steps))
            times["ours train_step"].append(timed(step, args.steps))
            start = time.perf_counter()
            fit(args.steps)
            jax.block_until_ready(trainer.train_state)
            times["ours fit"].append((time.perf_counter() - start) / args.steps)
            if fit_pre is not None:
                start = time.perf_counter()
                fit_pre(args.steps)
                jax.block_until_ready(pre_trainer.train_state)
                times.setdefault("ours fit, reference precomputed", []).append(
                    (time.perf_counter() - start) / args.steps)
        med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
        row = {"algorithm": algo, **{f"{k} steps/s": 1 / med[k] for k in times if "precomputed" not in k},
               "ours fit / theirs shipped": med["theirs shipped"] / med["ours fit"],
               "ours fit / theirs jitted": med["theirs jitted"] / med["ours fit"],
               "floor / theirs jitted": med["theirs jitted"] / med["floor"],
               "ours fit / floor (time)": med["ours fit"] / med["floor"],
               "precomputed reference / theirs shipped": (
                   med["theirs shipped"] / med["ours fit, reference precomputed"] if fit_pre else None)}
        rows.append(row)
        print(markdown_table([row]), flush=True)
    print()
    print(markdown_table(rows))
    print()
    print(markdown_table(agree))
    summary = {f"{r['algorithm']} vs shipped": r["ours fit / theirs shipped"] for r in rows}
    summary |= {f"{r['algorithm']} vs jitted": r["ours fit / theirs jitted"] for r in rows}
    summary["targets"] = ">= 10x shipped, >= 1.5x jitted (or within 1.05x of the floor)"
    save("vs_artifex", rows, summary=summary, notes=f"losses at the initial parameters: {agree}")


if __name__ == "__main__":
    main()
