"""One GRPO update step and one online GRPO iteration: ours (artifex_rl) against Hugging Face TRL's ``GRPOTrainer``.

Settings (issue 15, section 2), the same on both sides: a random-init causal
transformer, vocab 64, 2 layers, width 128, 4 heads, MLP 4x, tied embeddings,
learned positions; prompt 8 + completion 24 tokens; 16 prompts x 4
generations = 64 sequences per step; GRPO with clip 0.2, beta 0.04 against a
frozen reference (a copy of the initial policy), per-sequence token means
(``loss_type="grpo"``), group-scaled rewards, no entropy term, Adam 1e-3,
global-norm clip 1.0, temperature 1, every completion the full 24 tokens
(ours: no EOS; TRL: ``min_new_tokens``), no hub downloads.

* ours: ``TransformerLM`` + ``GRPOTrainer`` in this venv (JAX CPU).
  *update*: ``train_step`` on a fixed offline batch (prompts, completions,
  rewards, old log-probs, group size; the reference is scored inside the
  step); *online*: ``train_step({"observations": prompts}, reward_fn, key)``
  (KV-cache sampling, a jittable reward: the fraction of completion tokens
  equal to 7, reference scoring, update, all one compiled call).
* TRL: a random GPT-2 of the same shape (``GPT2Config(vocab_size=64, n_layer=2,
  n_embd=128, n_head=4)``) and a local WordLevel tokenizer over 64 tokens,
  saved to a scratch folder (TRL rebuilds its reference from the config path)
  and run with ``HF_HUB_OFFLINE=1``, torch CPU at ``torch.set_num_threads(t)`` for each
  ``t`` in ``--trl-threads`` (default 2 and 1),
  a constant reward function, ``gradient_checkpointing=False`` (TRL's default is
  True; ours does not recompute). *online*: wall time of one trainer step
  (``on_step_begin`` -> ``on_step_end``: generation, reward, reference scoring,
  loss, backward, Adam); *update*: on the last step's generated batch,
  reference scoring (no grad) + ``compute_loss`` + backward + clip + Adam step.
  The TRL part runs in the bench-only venv ``.bench-envs/trl`` as a subprocess
  (this file with ``--trl-child``, one JSON line on stdout).

Ours and TRL alternate over ``--rounds`` rounds so machine load hits both
alike; each figure is the median per-step time over the repeats of all rounds
after warm-up; ratios are TRL / ours (> 1: ours faster). ``--shapes`` adds
larger shapes (sequence 128 and 512, a quarter of it prompt, widths 256 and
512; fewer repeats) to show how the two scale.

    .venv/bin/python bench/vs_trl.py [--rounds 3] [--steps 10] [--shapes]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TRL_PYTHON = os.path.join(os.path.dirname(HERE), ".bench-envs", "trl", "bin", "python")
VOCAB, LAYERS, HEADS, PROMPTS, GROUP, BETA, LR, CLIP, TARGET_TOKEN = 64, 2, 4, 16, 4, 0.04, 1e-3, 0.2, 7
BASE = {"prompt": 8, "completion": 24, "width": 128}
LARGER = [{"prompt": 32, "completion": 96, "width": 256}, {"prompt": 32, "completion": 96, "width": 512},
          {"prompt": 128, "completion": 384, "width": 512}]


# --------------------------------------------------------------------------- ours (JAX)
def time_ours(shape: dict, steps: int, warmup: int) -> dict:
    """Per-step seconds of our offline update and our online iteration (lists, one entry per timed step)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from artifex_rl.models.transformer import TransformerLM
    from artifex_rl.rl import GRPOConfig, GRPOTrainer

    p, n, d = shape["prompt"], shape["completion"], shape["width"]

    def reward_fn(tokens, conditions, completion_mask):
        hits = jnp.sum((tokens == TARGET_TOKEN) * completion_mask, axis=-1)
        return hits / jnp.maximum(jnp.sum(completion_mask, axis=-1), 1)

    def make() -> GRPOTrainer:
        model = TransformerLM(VOCAB, p + n, d_model=d, num_layers=LAYERS, num_heads=HEADS, rngs=nnx.Rngs(0))
        config = GRPOConfig(num_generations=GROUP, clip_param=CLIP, beta=BETA, entropy_coeff=0.0, policy="tokens",
                            loss_type="grpo", max_new_tokens=n, temperature=1.0, eos_id=None, max_grad_norm=1.0)
        return GRPOTrainer(model, optax.adam(LR), config, reward_fn=reward_fn)

    rng = jax.random.split(jax.random.key(0), 3)
    prompts = jax.random.randint(rng[0], (PROMPTS, p), 3, VOCAB)
    rows = jnp.repeat(prompts, GROUP, axis=0)
    completions = jax.random.randint(rng[1], (PROMPTS * GROUP, n), 3, VOCAB)
    trainer = make()
    logits = trainer.model(jnp.concatenate([rows, completions], axis=1))[:, p - 1:-1]
    old = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), completions[..., None], -1)[..., 0]
    batch = {"observations": rows, "actions": completions, "rewards": jax.random.uniform(rng[2], (PROMPTS * GROUP,)),
             "log_probs": old, "group_size": GROUP}
    update = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        jax.block_until_ready(trainer.train_step(batch))
        if i >= warmup:
            update.append(time.perf_counter() - start)
    trainer, online = make(), []
    for i in range(warmup + steps):
        start = time.perf_counter()
        jax.block_until_ready(trainer.train_step({"observations": prompts}, reward_fn, jax.random.key(i)))
        if i >= warmup:
            online.append(time.perf_counter() - start)
    return {"update": update, "online": online}


# --------------------------------------------------------------------------- TRL (torch), in its own venv
def trl_child(shape: dict, steps: int, warmup: int, threads: int = 2) -> dict:
    """Per-step seconds of TRL's online iteration and of its update alone (runs in ``.bench-envs/trl``)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    p, n, d = shape["prompt"], shape["completion"], shape["width"]
    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [f"t{i}" for i in range(VOCAB - len(specials))])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                        eos_token="<eos>", unk_token="<unk>", padding_side="left")
    folder = tempfile.mkdtemp(prefix="vs_trl_")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_layer=LAYERS, n_embd=d, n_head=HEADS, n_positions=p + n,
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    total = warmup + steps
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (total * PROMPTS, p), generator=gen).tolist()
    dataset = Dataset.from_dict({"prompt": [" ".join(f"t{i - 4}" for i in row) for row in ids]})

    def reward(completions, **kwargs):
        return [1.0] * len(completions)

    args = GRPOConfig(output_dir=os.path.join(folder, "out"), num_generations=GROUP,
                      per_device_train_batch_size=PROMPTS * GROUP, gradient_accumulation_steps=1,
                      max_completion_length=n, generation_kwargs={"min_new_tokens": n}, beta=BETA, epsilon=CLIP,
                      loss_type="grpo", scale_rewards="group", learning_rate=LR, lr_scheduler_type="constant",
                      max_grad_norm=1.0, temperature=1.0, max_steps=total, logging_steps=10**6, save_strategy="no",
                      eval_strategy="no", gradient_checkpointing=False, report_to="none", use_cpu=True,
                      bf16=False, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)

    trainer = GRPOTrainer(model=folder, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepTimer()])
    trainer.train()
    inputs = trainer._buffered_inputs[0]
    assert inputs["completion_ids"].shape == (PROMPTS * GROUP, n), inputs["completion_ids"].shape
    net, opt = trainer.model, trainer.optimizer
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    update = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with torch.no_grad():
            inputs["ref_per_token_logps"] = trainer._get_per_token_logps_and_entropies(trainer.ref_model, input_ids,
                                                                                       mask, n)[0]
        loss = trainer.compute_loss(net, inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if i >= warmup:
            update.append(time.perf_counter() - start)
    return {"update": update, "online": times[warmup:], "torch": torch.__version__,
            "trl": __import__("trl").__version__, "params": sum(t.numel() for t in net.parameters())}


def time_trl(shape: dict, steps: int, warmup: int, threads: int = 2) -> dict:
    """Run :func:`trl_child` in the TRL venv; its last stdout line is the JSON result."""
    cmd = [TRL_PYTHON, os.path.abspath(__file__), "--trl-child", json.dumps(shape), str(steps), str(warmup),
           "--trl-threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode:
        raise RuntimeError(f"TRL child failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- driver
def measure(shape: dict, rounds: int, steps: int, warmup: int, threads: list[int]) -> dict:
    """Alternate ours / TRL (at each torch thread count) for ``rounds`` rounds; the row of medians for ``shape``."""
    sides = ["ours", *threads]
    times: dict = {side: {"update": [], "online": []} for side in sides}
    meta: dict = {}
    for r in range(rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            got = time_ours(shape, steps, warmup) if side == "ours" else time_trl(shape, steps, warmup, side)
            for k in ("update", "online"):
                times[side][k].extend(got[k])
            meta = meta or {k: got[k] for k in ("torch", "trl", "params") if k in got}
            print(f"  round {r + 1} {side if side == 'ours' else f'TRL {side} thr'}: update "
                  f"{statistics.median(got['update']):.4f} s, online {statistics.median(got['online']):.4f} s",
                  flush=True)
    med = {side: {k: statistics.median(v) for k, v in times[side].items()} for side in sides}
    row = {"sequence": shape["prompt"] + shape["completion"], "prompt": shape["prompt"], "width": shape["width"],
           "ours update s": med["ours"]["update"], "ours online s": med["ours"]["online"]}
    for t in threads:
        row[f"TRL {t}thr update s"] = med[t]["update"]
        row[f"TRL {t}thr online s"] = med[t]["online"]
    for t in threads:
        row[f"TRL {t}thr/ours update"] = med[t]["update"] / med["ours"]["update"]
        row[f"TRL {t}thr/ours online"] = med[t]["online"] / med["ours"]["online"]
    return {**row, "_meta": meta}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--shapes", action="store_true", help="also time sequence 128 and 512, widths 256/512")
    parser.add_argument("--shape-steps", type=int, default=3)
    parser.add_argument("--shape-rounds", type=int, default=1)
    parser.add_argument("--trl-threads", type=int, nargs="+", default=[2, 1],
                        help="torch.set_num_threads of the TRL runs (one TRL column pair per value)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/vs_trl.json)")
    parser.add_argument("--trl-child", nargs=3, metavar=("SHAPE", "STEPS", "WARMUP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_child:
        shape, steps, warmup = json.loads(args.trl_child[0]), int(args.trl_child[1]), int(args.trl_child[2])
        print(json.dumps(trl_child(shape, steps, warmup, args.trl_threads[0])))
        return
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.dirname(HERE))
    from _results import markdown_table, save

    load0 = os.getloadavg()[0]
    plan = [(BASE, args.rounds, args.steps, args.warmup)]
    if args.shapes:
        plan += [(s, args.shape_rounds, args.shape_steps, 1) for s in LARGER]
    rows = []
    for shape, rounds, steps, warmup in plan:
        print(f"shape {shape}: {rounds} rounds x {steps} steps", flush=True)
        rows.append(measure(shape, rounds, steps, warmup, args.trl_threads))
    meta = rows[0].pop("_meta")
    for r in rows[1:]:
        r.pop("_meta")
    print(markdown_table(rows))
    load1 = os.getloadavg()[0]
    print(f"load average (1 min) {load0:.2f} at start, {load1:.2f} at end; TRL {meta['trl']}, torch {meta['torch']}, "
          f"GPT-2 params at the base shape {meta['params']}")
    base = rows[0]
    save("vs_trl", rows, summary={**{k: v for k, v in base.items() if "/ours" in k}, **meta,
                                  "load_average_1min": [load0, load1]},
         notes=("Per-step seconds, medians over all rounds' timed steps; ours and TRL alternate. TRL update = "
                "reference scoring + compute_loss + backward + clip + Adam on its last generated batch; TRL online "
                "= one GRPOTrainer step (generate, reward, reference, update). TRL runs at each torch thread count "
                "given (--trl-threads); XLA:CPU uses its default thread pool on the same cores. On a loaded "
                "machine torch's 2-thread OpenMP pool is far slower than 1 thread (barrier waits when another "
                "process holds a core): compare the load average."), out=args.out)


if __name__ == "__main__":
    main()
