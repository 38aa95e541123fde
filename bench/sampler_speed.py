"""Generated tokens/s: compiled KV-cache sampler vs compiled recompute sampler.

Both samplers are ``jax.jit``-ted once (``Sampler``), warmed up, then timed
side by side in this process, alternating repeats so machine load hits both
alike. The recompute sampler runs a full causal forward over the fixed
``(B, P + N)`` buffer for each of the ``N`` new tokens; the KV-cache sampler
runs one prefill over the prompt and then one single-token step per new token.
No EOS is set, so every row generates all ``N`` tokens.

    python bench/sampler_speed.py [--batch 64] [--prompt 8] [--new 32] [--repeats 20]
    python bench/sampler_speed.py --sweep [32 64 128 256] -> bench/results/sampler_speed.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from artifex_rl.models.transformer import Sampler, TransformerLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import markdown_table, save  # noqa: E402


def measure(args: argparse.Namespace) -> dict:
    """Time both samplers at ``args.new`` new tokens; print and return one row."""
    model = TransformerLM(
        args.vocab, args.prompt + args.new, d_model=args.d_model, num_layers=args.layers, rngs=nnx.Rngs(0)
    )
    graphdef, state = nnx.split(model)
    prompts = jax.random.randint(jax.random.key(1), (args.batch, args.prompt), 1, args.vocab, jnp.int32)
    samplers = {
        "kv_cache": Sampler(graphdef, max_new_tokens=args.new, use_cache=True),
        "recompute": Sampler(graphdef, max_new_tokens=args.new, use_cache=False),
    }

    compile_s = {}
    for name, sampler in samplers.items():
        start = time.perf_counter()
        jax.block_until_ready(sampler(state, prompts, key=jax.random.key(0)))
        compile_s[name] = time.perf_counter() - start
    # Same key, same tokens: the comparison is between equal work products.
    same = bool(
        jnp.array_equal(
            samplers["kv_cache"](state, prompts, key=jax.random.key(0)).tokens,
            samplers["recompute"](state, prompts, key=jax.random.key(0)).tokens,
        )
    )

    times: dict[str, list[float]] = {name: [] for name in samplers}
    for r in range(args.repeats):
        for name, sampler in samplers.items():
            start = time.perf_counter()
            jax.block_until_ready(sampler(state, prompts, key=jax.random.key(r + 1)))
            times[name].append(time.perf_counter() - start)

    tokens = args.batch * args.new
    print(
        f"batch={args.batch} prompt={args.prompt} new={args.new} d_model={args.d_model} "
        f"layers={args.layers} vocab={args.vocab} repeats={args.repeats} backend={jax.default_backend()}"
    )
    rate = {}
    for name in samplers:
        median = statistics.median(times[name])
        rate[name] = tokens / median
        print(
            f"{name:>10}: {rate[name]:>11,.0f} generated tokens/s  "
            f"(median {median * 1e3:.2f} ms/call, first call incl. compile {compile_s[name]:.2f} s)"
        )
    print(f"speed-up kv_cache / recompute: {rate['kv_cache'] / rate['recompute']:.2f}x")
    print(f"identical tokens for the same key: {same}")

    return {"new tokens": args.new, "kv_cache tokens/s": rate["kv_cache"], "recompute tokens/s": rate["recompute"],
            "speed-up": rate["kv_cache"] / rate["recompute"], "identical tokens": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=8)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sweep", type=int, nargs="*", default=None,
                        help="completion lengths to sweep (default 32 64 128 256); repeats shrink as 32/length")
    args = parser.parse_args()
    if args.sweep is None:
        measure(args)
        return
    rows, repeats = [], args.repeats
    for new in args.sweep or (32, 64, 128, 256):
        # recompute is O(N^2) forwards: fewer repeats at long lengths keep the sweep to minutes
        args.new, args.repeats = new, max(1, repeats * 32 // new)
        rows.append(measure(args))
    print()
    print(markdown_table(rows))
    save("sampler_speed", rows, summary={f"kv-cache speed-up at {r['new tokens']}": r["speed-up"] for r in rows})



if __name__ == "__main__":
    main()
