"""Each algorithm's ``fit`` step against the floor: a hand-written pure donated ``jax.jit`` step.

The floor computes the same loss on the same inputs with the fewest forward
passes the maths allows, on plain pytrees (no trainer, no NaN check, no
metrics beyond the loss): REINFORCE one policy forward; GRPO the policy and
the frozen reference (two); DPO chosen and rejected stacked through the policy
and through the reference (two forwards of 2B rows); token PPO (one update of
one minibatch on a given rollout, as their ``train_step``) one forward of the
value-head LM, with the shaped rewards, GAE and whitening computed inside the
step as ours does, and ``PPOConfig``'s global-norm clip of 0.5. Model and batch are
``bench/vs_artifex.py``'s anchor LM. The first step's loss of the floor and of
ours are printed side by side (they must agree: the floor is only a floor if
it computes the same thing).

Ours runs with its defaults (``nan_policy="raise"``: a non-finite update is
kept out of the parameters) and with ``nan_policy="off"``, one step per call
and ``steps_per_execution=10``; all timed interleaved in rounds, medians.
XLA's cost analysis of each one-step executable (FLOPs, bytes accessed,
kernels launched) is printed too: it does not move with the machine's load.

    PYTHONPATH=. python bench/floors.py [--steps 30 --rounds 5]
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from _anchor_lm import (  # noqa: E402
    BETA_DPO,
    BETA_GRPO,
    CLIP,
    ENTROPY,
    GROUP,
    LR,
    PROMPT,
    AnchorLM,
    AnchorValueLM,
    completion_log_probs,
    completion_values,
    data,
)
from _results import markdown_table, save  # noqa: E402
from flax import nnx  # noqa: E402

from artifex_rl.core.runner import split_batch  # noqa: E402
from artifex_rl.rl import (  # noqa: E402
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    PPOConfig,
    PPOTrainer,
    REINFORCEConfig,
    REINFORCETrainer,
)


def _token_scores(apply, params, seqs):
    """Completion-token log-probs and entropies ``(B, N)`` from one forward pass."""
    logp = jax.nn.log_softmax(apply(params, seqs)[:, PROMPT - 1:-1], -1)
    tok = jnp.take_along_axis(logp, seqs[:, PROMPT:, None], -1)[..., 0]
    return tok, -jnp.sum(jnp.exp(logp) * logp, -1)


#: The PPO floor uses PPOConfig's defaults, as ours runs with them (discount, GAE lambda, value weight, clip).
_PPO_DEFAULTS = PPOConfig()
GAMMA, GAE_LAMBDA = _PPO_DEFAULTS.gamma, _PPO_DEFAULTS.gae_lambda
VF_COEFF, PPO_MAX_GRAD_NORM = _PPO_DEFAULTS.vf_coeff, _PPO_DEFAULTS.max_grad_norm


def _ppo_floor_loss(apply, params, b):
    """Token PPO on a rollout with every completion token real: score at the last token, GAE, whitening."""
    logits, values = apply(params, b["seqs"])
    logp = jax.nn.log_softmax(logits[:, PROMPT - 1:-1], -1)
    tok = jnp.take_along_axis(logp, b["seqs"][:, PROMPT:, None], -1)[..., 0]
    ent = -jnp.sum(jnp.exp(logp) * logp, -1)
    v, old_v = values[:, PROMPT - 1:-1], b["old_values"]
    rewards = jnp.zeros_like(old_v).at[:, -1].set(b["rewards"])
    delta = rewards + GAMMA * jnp.pad(old_v[:, 1:], ((0, 0), (0, 1))) - old_v

    def back(next_adv, d):
        adv = d + GAMMA * GAE_LAMBDA * next_adv
        return adv, adv

    adv = jax.lax.scan(back, jnp.zeros(delta.shape[0]), delta.T, reverse=True)[1].T
    returns = adv + old_v
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    ratio = jnp.exp(tok - b["old"])
    surrogate = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - CLIP, 1 + CLIP) * adv)
    v_clipped = old_v + jnp.clip(v - old_v, -CLIP, CLIP)
    value_loss = 0.5 * jnp.maximum(jnp.square(v - returns), jnp.square(v_clipped - returns))
    return jnp.mean(surrogate + VF_COEFF * value_loss - ENTROPY * ent)


def floor_loss(algo: str, apply, params, ref_params, b):
    if algo == "PPO":
        return _ppo_floor_loss(apply, params, b)
    if algo == "REINFORCE":
        tok, ent = _token_scores(apply, params, b["seqs"])
        r = b["rewards"]
        ret = (r - r.mean()) / (r.std() + 1e-8)
        return -jnp.mean(tok.sum(-1) * ret) - ENTROPY * ent.mean()
    if algo == "GRPO":
        tok, ent = _token_scores(apply, params, b["seqs"])
        ref, _ = _token_scores(apply, ref_params, b["seqs"])
        g = b["rewards"].reshape(-1, GROUP)
        adv = ((g - g.mean(1, keepdims=True)) / (g.std(1, keepdims=True) + 1e-4)).reshape(-1, 1)
        ratio = jnp.exp(tok - b["old"])
        surrogate = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - CLIP, 1 + CLIP) * adv)
        d = jax.lax.stop_gradient(ref) - tok
        kl = jnp.exp(d) - d - 1
        per_token = surrogate + BETA_GRPO * kl - ENTROPY * ent
        return per_token.mean(-1).mean()
    both = jnp.concatenate([b["seqs"], b["rejected"]])
    tok, _ = _token_scores(apply, params, both)
    ref, _ = _token_scores(apply, ref_params, both)
    n = b["seqs"].shape[0]
    logratio = tok.sum(-1) - jax.lax.stop_gradient(ref.sum(-1))
    return -jnp.mean(jax.nn.log_sigmoid(BETA_DPO * (logratio[:n] - logratio[n:])))


def make_floor(algo: str, model, b):
    graphdef, params = nnx.split(model, nnx.Param)
    ref_params = jax.tree.map(jnp.copy, params)
    tx = optax.chain(optax.clip_by_global_norm(PPO_MAX_GRAD_NORM), optax.adam(LR)) if algo == "PPO" \
        else optax.adam(LR)

    def apply(p, x):
        return nnx.merge(graphdef, p)(x)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, b):
        params, opt_state = state
        loss, grads = jax.value_and_grad(lambda p: floor_loss(algo, apply, p, ref_params, b))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    holder = {"state": (params, tx.init(params))}

    def run():
        holder["state"], loss = step(holder["state"], b)
        return loss

    run.lower = lambda: step.lower(holder["state"], b)
    return run


def compiled_cost(lowered) -> dict:
    """XLA's own count of a compiled step's work: GFLOP, MB read and written, and kernels.

    Deterministic, so it separates "does more work" from machine load. Kernels
    are the instructions of the entry computation and of its loop bodies and
    conditional branches (fusions and unfused ops, which XLA:CPU launches one
    by one; parameters, tuples and constants aside).
    """
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    text = compiled.as_text()
    bodies = {m.split("(")[0].split()[-1].lstrip("%"): m for m in re.split(r"\n(?=\S)", text) if "{" in m.split("\n", 1)[0]}
    # The kernels run from the entry computation and the bodies and branches of its loops and conditionals.
    launched = set(re.findall(r"(?:body|true_computation|false_computation)=%?([\w.-]+)", text))
    for group in re.findall(r"branch_computations=\{([^}]*)\}", text):
        launched |= {name.strip().lstrip("%") for name in group.split(",")}
    kernels = 0
    for name, computation in bodies.items():
        if computation.startswith("ENTRY") or name in launched:
            ops = re.findall(r"^\s+(?:ROOT )?\S+ = (?:\([^=]*?\)|\S+) ([\w-]+)\(", computation, re.M)
            kernels += sum(op not in ("parameter", "tuple", "get-tuple-element", "constant", "bitcast") for op in ops)
    return {"GFLOP": cost.get("flops", 0.0) / 1e9, "MB accessed": cost.get("bytes accessed", 0.0) / 1e6,
            "kernels": kernels}


def our_step_lowered(trainer, batch):
    """Our one-step executable as ``train_step`` calls it (lowered through the trainer's private cache)."""
    arrays, static = split_batch(batch)
    return trainer._compiled_fns()["step"].lower(trainer.train_state, trainer.frozen_states, arrays, static)


def floor_batch(algo: str, model, d) -> dict:
    """The floor's inputs: sequences (chosen and rejected), rewards, the old log-probs (and values: PPO)."""
    seqs = jnp.asarray(d["sequences"])
    b = {"seqs": seqs, "rejected": jnp.asarray(d["rejected"]).at[:, :PROMPT].set(seqs[:, :PROMPT]),
         "rewards": jnp.asarray(d["rewards"]), "old": completion_log_probs(model, seqs)}
    if algo == "PPO":
        b["old_values"] = completion_values(model, seqs)
    return b


def make_ours(algo: str, model, d, **config):
    seqs = jnp.asarray(d["sequences"])
    prompts, completions = seqs[:, :PROMPT], seqs[:, PROMPT:]
    config = dict(log_every_n_steps=10_000, **config)
    rewards = jnp.asarray(d["rewards"])
    if algo == "REINFORCE":
        trainer = REINFORCETrainer(model, optax.adam(LR), REINFORCEConfig(entropy_coeff=ENTROPY, policy="tokens",
                                                                         **config))
        batch = {"observations": prompts, "actions": completions, "rewards": rewards}
    elif algo == "GRPO":
        trainer = GRPOTrainer(model, optax.adam(LR), GRPOConfig(num_generations=GROUP, clip_param=CLIP,
                                                                beta=BETA_GRPO, entropy_coeff=ENTROPY, **config))
        batch = {"observations": prompts, "actions": completions, "rewards": rewards,
                 "log_probs": completion_log_probs(model, seqs), "group_size": GROUP}
    elif algo == "PPO":
        # One update on a given rollout (as their train_step): old log-probs and values given,
        # no reference (kl_coeff 0); the shaped rewards, GAE and whitening run inside the step.
        trainer = PPOTrainer(model, optax.adam(LR), PPOConfig(
            policy="tokens", update_epochs=1, num_minibatches=1, kl_coeff=0.0, clip_param=CLIP,
            entropy_coeff=ENTROPY, **config))
        batch = {"observations": prompts, "actions": completions, "rewards": rewards,
                 "log_probs": completion_log_probs(model, seqs), "values": completion_values(model, seqs)}
    else:
        trainer = DPOTrainer(model, optax.adam(LR), DPOConfig(beta=BETA_DPO, **config))
        batch = {"observations": prompts, "chosen": completions, "rejected": jnp.asarray(d["rejected"])[:, PROMPT:]}
    return trainer, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algos", nargs="+", default=["REINFORCE", "GRPO", "DPO", "PPO"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    d = data()
    rows, losses, costs = [], [], []
    for algo in args.algos:
        model_class = AnchorValueLM if algo == "PPO" else AnchorLM
        model = model_class(nnx.Rngs(0))
        b = floor_batch(algo, model, d)
        floor = make_floor(algo, model, b)
        variants = {"ours (defaults)": {}, "ours nan_policy=off": {"nan_policy": "off"},
                    "ours K=10": {"steps_per_execution": 10}}
        trainers = {name: make_ours(algo, model_class(nnx.Rngs(0)), d, **cfg) for name, cfg in variants.items()}
        first = {name: float(t.train_step(batch)["loss"]) for name, (t, batch) in trainers.items()}
        losses.append({"algorithm": algo, "floor loss": float(floor()), "our loss": first["ours (defaults)"]})
        for name, lowered in {"floor": floor.lower(), **{n: our_step_lowered(*trainers[n]) for n in
                                                          ("ours (defaults)", "ours nan_policy=off")}}.items():
            costs.append({"algorithm": algo, "step": name, **compiled_cost(lowered)})

        def fit_fn(trainer, batch):
            def run():
                trainer.fit([batch] * args.steps, max_steps=trainer.global_step + args.steps)
                return trainer.train_state
            return run

        fns = {"floor": lambda floor=floor: [floor() for _ in range(args.steps)][-1]}
        fns |= {name: fit_fn(t, batch) for name, (t, batch) in trainers.items()}
        for fn in fns.values():  # compile every path (fit's chunked calls included)
            jax.block_until_ready(fn())
        times = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                start = time.perf_counter()
                jax.block_until_ready(fn())
                times[name].append((time.perf_counter() - start) / args.steps * 1e3)
        med = {name: statistics.median(v) for name, v in times.items()}
        row = {"algorithm": algo, "floor ms": med["floor"]}
        for name in variants:
            row[f"{name} ms"] = med[name]
            row[f"{name} / floor"] = med[name] / med["floor"]
        rows.append(row)
        print(markdown_table([row]), flush=True)
    print()
    print(markdown_table(rows))
    print()
    print(markdown_table(losses))
    print()
    print("XLA's cost analysis of each one-step executable (deterministic):")
    print(markdown_table(costs))
    save("floors", rows, summary={**{f"{r['algorithm']} defaults / floor": r["ours (defaults) / floor"]
                                     for r in rows}, "target": "<= 1.05"},
         notes=f"first-step losses, floor vs ours: {losses}; compiled costs: {costs}")


if __name__ == "__main__":
    main()
