"""One GRPO update step: ours (artifex_rl) against Google's Tunix (``google-tunix`` 0.1.7).

The shape of ``bench/vs_trl.py``: a random-init causal transformer, vocab 64,
2 layers, width 128, 4 heads; prompt 8 + completion 24 tokens; 16 prompts x 4
generations = 64 sequences; GRPO clip 0.2, beta 0.04 against a frozen
reference (a copy of the initial policy), per-sequence token means, the k3
("low_var_kl") KL estimator, Adam 1e-3 with global-norm clip 1.0; no hub
downloads.

* ours: ``TransformerLM`` + ``GRPOTrainer.train_step`` on an offline batch
  (prompts, completions, rewards, old log-probs, group size): group
  advantages, the reference's forward pass, the loss, the gradient and the
  update in one compiled call (``bench/vs_trl.py``'s ``time_ours``).
* Tunix: its ``Llama3`` (``tunix.models.llama3``; RMSNorm, RoPE, gated MLP,
  tied embeddings) with the gated MLP's width chosen so the parameter count
  is within a few percent of ours; its own ``grpo_loss_fn`` (the registered
  ``"grpo"`` policy loss) under ``nnx.value_and_grad`` and the optimizer update
  in one ``nnx.jit`` (what its trainer compiles), plus its
  ``compute_per_token_logps`` of the reference (jitted), which its learner runs
  at rollout time: one update = reference scoring + update. Advantages are
  given (its learner computes them on the host before the step). Trap met:
  ``grpo_loss_fn`` reads ``algo_config.temperature``, which ``GRPOConfig``
  lacks; it is set on the config object here.

Tunix runs in the bench-only venv ``.bench-envs/tunix`` (this file with
``--tunix-child``, one JSON line on stdout); the two sides alternate over
``--rounds`` rounds; figures are medians over every timed step.

    .venv/bin/python bench/vs_tunix.py [--rounds 3] [--steps 10] [--shapes]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TUNIX_PYTHON = os.path.join(os.path.dirname(HERE), ".bench-envs", "tunix", "bin", "python")
VOCAB, LAYERS, HEADS, PROMPTS, GROUP, BETA, LR, CLIP = 64, 2, 4, 16, 4, 0.04, 1e-3, 0.2
SHAPE = {"prompt": 8, "completion": 24, "width": 128}


def our_param_count(shape: dict) -> int:
    import jax
    from flax import nnx

    from artifex_rl.models.transformer import TransformerLM

    model = TransformerLM(VOCAB, shape["prompt"] + shape["completion"], d_model=shape["width"], num_layers=LAYERS,
                          num_heads=HEADS, rngs=nnx.Rngs(0))
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def tunix_child(shape: dict, steps: int, warmup: int, target_params: int) -> dict:
    """Time Tunix's GRPO update (reference scoring + loss + gradient + update) in its venv."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from tunix.models.llama3 import model as llama
    from tunix.rl import algo_core, common
    from tunix.rl.grpo.grpo_learner import GRPOConfig, TrainExample

    p, n, d = shape["prompt"], shape["completion"], shape["width"]

    def build(hidden: int, seed: int = 0):
        cfg = llama.ModelConfig(num_layers=LAYERS, vocab_size=VOCAB, embed_dim=d, hidden_dim=hidden, num_heads=HEADS,
                                head_dim=d // HEADS, num_kv_heads=HEADS, rope_theta=10_000, norm_eps=1e-5,
                                weight_tying=True)
        return llama.Llama3(cfg, rngs=nnx.Rngs(seed))

    def count(model) -> int:
        return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    # The count is linear in the gated MLP's width: solve for ours, round to a multiple of 8.
    c8, c16 = count(build(8)), count(build(16))
    hidden = max(8, 8 * round((8 + (target_params - c8) * 8 / (c16 - c8)) / 8))
    model, reference = build(hidden), build(hidden)
    ref_graphdef, ref_state = nnx.split(reference)
    algo = GRPOConfig(num_generations=GROUP, beta=BETA, epsilon=CLIP, kl_loss_mode="low_var_kl")
    object.__setattr__(algo, "temperature", 1.0)  # read by grpo_loss_fn, not a field of GRPOConfig
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LR))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    pad_id, eos_id = 0, 1  # token ids 3..63 are drawn below: no padding, no EOS

    @jax.jit
    def reference_logps(state, prompts, completions):
        return common.compute_per_token_logps(ref_graphdef, state, prompts, completions, pad_id=pad_id, eos_id=eos_id)

    @nnx.jit
    def update(model, optimizer, example):
        def loss_fn(m):
            return algo_core.grpo_loss_fn(m, example, algo, pad_id=pad_id, eos_id=eos_id)

        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss

    keys = jax.random.split(jax.random.key(0), 3)
    prompts = jnp.repeat(jax.random.randint(keys[0], (PROMPTS, p), 3, VOCAB), GROUP, axis=0)
    completions = jax.random.randint(keys[1], (PROMPTS * GROUP, n), 3, VOCAB)
    rewards = jax.random.uniform(keys[2], (PROMPTS, GROUP))
    advantages = ((rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, keepdims=True) + 1e-4)).reshape(-1)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        example = TrainExample(
            prompt_ids=prompts, prompt_mask=jnp.ones_like(prompts), completion_ids=completions,
            completion_mask=jnp.ones_like(completions), advantages=advantages,
            ref_per_token_logps=reference_logps(ref_state, prompts, completions), old_per_token_logps=None)
        jax.block_until_ready(update(model, optimizer, example))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    import importlib.metadata as md

    return {"update": times, "params": count(model), "mlp_hidden": hidden, "tunix": md.version("google-tunix"),
            "jax": jax.__version__}


def time_tunix(shape: dict, steps: int, warmup: int, target_params: int) -> dict:
    cmd = [TUNIX_PYTHON, os.path.abspath(__file__), "--tunix-child", json.dumps(shape), str(steps), str(warmup),
           str(target_params)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"Tunix child failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--shapes", action="store_true",
                        help="also sequence 128 (32 + 96) at widths 256 and 512 (1 round, 3 steps)")
    parser.add_argument("--tunix-child", nargs=4, metavar=("SHAPE", "STEPS", "WARMUP", "PARAMS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tunix_child:
        shape, rest = json.loads(args.tunix_child[0]), (int(x) for x in args.tunix_child[1:])
        print(json.dumps(tunix_child(shape, *rest)))
        return
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.dirname(HERE))
    from _results import markdown_table, save
    from vs_trl import time_ours

    plan = [(SHAPE, args.rounds, args.steps, args.warmup)]
    if args.shapes:
        plan += [({"prompt": 32, "completion": 96, "width": w}, 1, 3, 1) for w in (256, 512)]
    rows, meta = [], {}
    for shape, rounds, steps, warmup in plan:
        target = our_param_count(shape)
        ours, theirs = [], []
        for r in range(rounds):
            for side in (("ours", "tunix") if r % 2 == 0 else ("tunix", "ours")):
                if side == "ours":
                    got = time_ours(shape, steps, warmup)["update"]
                    ours.extend(got)
                else:
                    result = time_tunix(shape, steps, warmup, target)
                    got = result.pop("update")
                    theirs.extend(got)
                    meta = meta or result
                print(f"{shape} round {r + 1} {side}: update {statistics.median(got):.4f} s", flush=True)
        rows.append({"sequence": shape["prompt"] + shape["completion"], "width": shape["width"],
                     "ours params": target, "ours update s": statistics.median(ours),
                     "Tunix update s": statistics.median(theirs),
                     "Tunix / ours": statistics.median(theirs) / statistics.median(ours)})
    print(markdown_table(rows))
    print(f"Tunix {meta['tunix']} (jax {meta['jax']}); at the base shape its Llama3 has {meta['params']} parameters "
          f"(gated MLP width {meta['mlp_hidden']})")
    save("vs_tunix", rows, summary={"Tunix / ours update": rows[0]["Tunix / ours"], **meta},
         notes="One GRPO update: Tunix = jitted reference scoring + nnx.jit(grpo_loss_fn, grad, update); "
               "ours = GRPOTrainer.train_step (reference scored inside). Medians over all timed steps; "
               "16 prompts x 4 generations at every shape.")


if __name__ == "__main__":
    main()
