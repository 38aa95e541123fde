"""PPO on token sequences: the RLHF loop of InstructGPT and TRL's ``PPOTrainer``.

The token branch of :class:`~artifex_rl.rl.PPOTrainer` (``policy="tokens"``).
The policy is a causal LM with a value head, ``model(tokens (B, L)) ->
(logits (B, L, V), values (B, L))`` (e.g. ``TransformerLM(..., value_head=True)``);
a completion token ``t`` (``0 <= t < N``) is one action, taken in the state
"prompt + completion tokens before ``t``", whose value is the value head at
sequence position ``P + t - 1`` (the position whose logits predict token ``t``).

Per batch (once, with the parameters that sampled it, ``pi_old``), with
``m`` the completion mask (1 up to and including EOS) and ``last`` the one-hot
of each row's last real token::

    r_t   = -kl_coeff * (log pi_old(o_t) - log pi_ref(o_t)) * m_t  +  score * last_t
    delta_t = r_t + gamma * V_{t+1} * (1 - last_t) - V_t           (V = 0 where m = 0)
    A_t   = delta_t + gamma * lambda * (1 - last_t) * A_{t+1}
    R_t   = A_t + V_t                                         (value targets)
    A     <- (A - mean_m(A)) / (std_m(A) + 1e-8)               (whitened over the batch's real tokens)

so padding after EOS gets no reward and nothing is bootstrapped across it. Per
minibatch (``epochs x minibatches`` in one compiled call, as for every PPO)::

    rho_t  = exp(log pi(o_t) - log pi_old(o_t))
    l_t    = -min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)
             + vf_coeff * 0.5 max((V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t, -eps, eps) - R_t)^2)
             - entropy_coeff * H_t
    loss   = sum_t m_t l_t / sum_t m_t              (the token mean over the minibatch)

Log-probs are under ``log_softmax(logits / temperature)``, the distribution the
sampler draws from. ``log pi_old`` and ``V_old`` come from one forward pass of
the policy over the batch before the updates -- the same function the loss
evaluates, so the first ratio is exactly 1 -- unless the batch brings
``log_probs``/``values``. References: Ouyang et al. 2022 (InstructGPT,
arXiv:2203.02155), eq. 2; Ziegler et al. 2019 (arXiv:1909.08593); Huang et al.
2024, "The N+ Implementation Details of RLHF with PPO" (arXiv:2403.17031).

Batch: ``observations`` prompts ``(B, P)`` int, ``actions`` completions
``(B, N)`` int, ``rewards`` ``(B,)`` (the sequence score), optional
``completion_mask``, ``prompt_mask``, ``log_probs``, ``values`` and
``ref_log_probs`` ``(B, N)``. Online (no ``rewards``): prompts
``(num_prompts, P)`` sampled ``group_size`` times each (default 1) and scored
by ``reward_fn`` (:mod:`artifex_rl.rl.online`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from artifex_rl.batches import check_shape, require
from artifex_rl.rl.base import REFERENCE
from artifex_rl.rl.generation import completion_scores, forward, full_sequence, sample_and_score
from artifex_rl.rl.losses import (
    clipped_surrogate_metrics,
    clipped_surrogate_per_element,
    compute_gae_advantages,
    masked_mean,
    masked_mean_term,
    normalize_advantages,
    value_loss_per_element,
)
from artifex_rl.rl.online import online_outputs

Array = jax.Array


# --------------------------------------------------------------------------- #
# The maths (pure)
# --------------------------------------------------------------------------- #
def last_token(mask: Array) -> Array:
    """``(B, N)`` float: 1 at each row's last real (``mask > 0``) token, 0 elsewhere (all 0 on an empty row)."""
    real = jnp.asarray(mask) > 0
    n = real.shape[-1]
    last = n - 1 - jnp.argmax(real[..., ::-1], axis=-1)
    return (jax.nn.one_hot(last, n) * jnp.any(real, axis=-1, keepdims=True)).astype(jnp.float32)


def kl_shaped_rewards(
    scores: Array, log_probs: Array, ref_log_probs: Array, mask: Array, kl_coeff: float | Array
) -> Array:
    """Per-token rewards ``(B, N)``: ``-kl_coeff (log pi_old - log pi_ref)`` at every real token, plus
    the sequence score ``(B,)`` at the last real token; 0 on padding (InstructGPT eq. 2, per token)."""
    real = jnp.asarray(mask) > 0
    penalty = jnp.where(real, -kl_coeff * (log_probs - ref_log_probs), 0.0)
    return penalty + last_token(mask) * jnp.asarray(scores, jnp.float32)[:, None]


def masked_token_gae(
    rewards: Array, values: Array, mask: Array, gamma: float | Array, gae_lambda: float | Array
) -> Array:
    """GAE ``(B, N)`` over completion tokens: the episode ends at each row's last real token.

    Rewards and values on padding are taken as 0 (selected, so NaN padding
    cannot leak) and nothing after the last real token is bootstrapped; the
    advantages of padding positions come out 0.
    """
    real = jnp.asarray(mask) > 0
    rewards = jnp.where(real, rewards, 0.0)
    values = jnp.where(real, values, 0.0)
    advantages = compute_gae_advantages(rewards, values, last_token(mask), gamma, gae_lambda)
    return jnp.where(real, advantages, 0.0)


def split_value_output(output: Any, who: str) -> tuple[Array, Array]:
    """``(logits (B, L, V), values (B, L))`` from a value-head LM's output, or a TypeError saying what came."""
    if (
        isinstance(output, (tuple, list)) and len(output) == 2
        and jnp.ndim(output[0]) == 3 and jnp.shape(output[1]) == jnp.shape(output[0])[:2]
    ):
        return output[0], output[1]
    if isinstance(output, (tuple, list)):
        got = f"a {type(output).__name__} of shapes {[jnp.shape(o) for o in output]}"
    else:
        got = f"an array of shape {jnp.shape(output)} (logits only: no value head)"
    raise TypeError(
        f"{who}(policy='tokens') needs a causal LM with a value head returning (logits (B, L, V), values "
        f"(B, L)); the model returned {got}. Use TransformerLM(..., value_head=True) or add a value head"
    )


def score_tokens_and_values(
    model: Any, prompts: Array, completions: Array, *, temperature: float, prompt_mask: Array | None, who: str
) -> tuple[Array, Array, Array]:
    """One forward: log-probs, entropies (under ``logits / temperature``) and values, each ``(B, N)``."""
    tokens, mask = full_sequence(prompts, completions, prompt_mask)
    logits, values = split_value_output(forward(model, tokens, mask), who)
    p = prompts.shape[1]
    log_probs, entropies = completion_scores(logits, tokens, p, temperature=temperature)
    # The value of the state before completion token t sits where its logits are: position P + t - 1.
    return log_probs, entropies, values[:, p - 1 : -1]


def _reference_log_probs(reference: Any, prompts, completions, temperature, prompt_mask) -> Array:
    tokens, mask = full_sequence(prompts, completions, prompt_mask)
    out = forward(reference, tokens, mask)
    logits = out[0] if isinstance(out, (tuple, list)) else out  # a value-head copy of the policy
    return completion_scores(logits, tokens, prompts.shape[1], temperature=temperature)[0]


def check_prompts(prompts: Any, who: str, key: str = "observations") -> None:
    """Prompts (or completions, ``key="actions"``) are integer token ids ``(B, P)`` with ``P >= 1``."""
    shape, dtype = jnp.shape(prompts), jnp.result_type(prompts)
    if len(shape) != 2 or shape[1] < 1 or not jnp.issubdtype(dtype, jnp.integer):
        what = "prompts (B, P)" if key == "observations" else "completions (B, N)"
        raise ValueError(
            f"{who}(policy='tokens'): batch[{key!r}] must be {what} of integer token ids, at least one "
            f"column; got shape {shape}, dtype {dtype}"
        )


# --------------------------------------------------------------------------- #
# The trainer's two hooks
# --------------------------------------------------------------------------- #
def prepare_token_batch(trainer: Any, model: Any, batch: dict[str, Any], rng: Array, frozen) -> dict[str, Any]:
    """Sample (online), score, shape the rewards, GAE and whiten: the batch the minibatches are cut from."""
    cfg, who = trainer.config, type(trainer).__name__
    outputs: dict[str, Any] = {}
    if "rewards" not in batch:
        trainer._require_reward_fn()
        check_prompts(batch["observations"], who)
        scored = sample_and_score(
            trainer.sample_fn, trainer.reward_fn, model, batch["observations"], batch.get("conditions"),
            batch.get("sample_key", rng), trainer.online_group_size(batch), prompt_mask=batch.get("prompt_mask"),
        )
        # The sampler's log-probs are dropped: the forward below gives them with the values,
        # computed as the loss computes them (first ratio exactly 1).
        batch = {k: v for k, v in scored.as_batch().items() if k != "log_probs"}
        outputs = online_outputs(scored)
    require(batch, ["observations", "actions", "rewards"], who)
    prompts, actions = batch["observations"], batch["actions"]
    check_prompts(prompts, who)
    b = prompts.shape[0]
    check_prompts(actions, who, "actions")
    check_shape("actions", actions, (b, None), who)
    scores = jnp.asarray(batch["rewards"], jnp.float32)
    check_shape("rewards", scores, (b,), who)
    mask = jnp.asarray(batch.get("completion_mask", jnp.ones(actions.shape)), jnp.float32)
    prompt_mask = batch.get("prompt_mask")
    for key, value, shape in (("completion_mask", mask, actions.shape), ("prompt_mask", prompt_mask, prompts.shape)):
        if value is not None:
            check_shape(key, value, shape, who)
    real = mask > 0

    def given(key):  # a (B, N) batch entry, padding zeroed (it may hold NaN)
        check_shape(key, batch[key], actions.shape, who)
        return jnp.where(real, jnp.asarray(batch[key], jnp.float32), 0.0)

    if "log_probs" in batch and "values" in batch:
        old_log_probs, old_values = given("log_probs"), given("values")
    else:
        log_probs, _, values = jax.lax.stop_gradient(score_tokens_and_values(
            model, prompts, actions, temperature=cfg.temperature, prompt_mask=prompt_mask, who=who
        ))
        old_log_probs = given("log_probs") if "log_probs" in batch else jnp.where(real, log_probs, 0.0)
        old_values = given("values") if "values" in batch else jnp.where(real, values, 0.0)

    if cfg.kl_coeff == 0:
        ref_log_probs = old_log_probs
    elif "ref_log_probs" in batch:
        ref_log_probs = given("ref_log_probs")
    elif REFERENCE in frozen:
        ref_log_probs = jnp.where(real, jax.lax.stop_gradient(_reference_log_probs(
            frozen[REFERENCE], prompts, actions, cfg.temperature, prompt_mask)), 0.0)
    else:
        raise ValueError(
            f"{who}: kl_coeff={cfg.kl_coeff} > 0 asks for a KL-shaped reward, but there is no reference: "
            "the batch has no 'ref_log_probs' and the trainer has no reference model (reference_model=None). "
            "Pass reference_model='copy' (the default) or a module, put 'ref_log_probs' in the batch, or set kl_coeff=0"
        )

    rewards = kl_shaped_rewards(scores, old_log_probs, ref_log_probs, mask, cfg.kl_coeff)
    advantages = masked_token_gae(rewards, old_values, mask, cfg.gamma, cfg.gae_lambda)
    returns = jnp.where(real, advantages + old_values, 0.0)
    kl = jnp.where(real, old_log_probs - ref_log_probs, 0.0)
    residual_var = masked_mean(jnp.square(advantages - masked_mean(advantages, mask)), mask)
    returns_var = masked_mean(jnp.square(returns - masked_mean(returns, mask)), mask)
    metrics = {
        "mean_reward": jnp.mean(scores),
        "kl": jnp.mean(jnp.sum(kl, axis=-1)),  # KL(pi_old || pi_ref) per sequence (k1 estimate)
        "non_score_reward": jnp.mean(jnp.sum(-cfg.kl_coeff * kl, axis=-1)),
        "advantage_mean": masked_mean(advantages, mask),
        "explained_variance": 1.0 - residual_var / (returns_var + 1e-8),
        "completion_length": jnp.mean(jnp.sum(mask, axis=-1)),
    }
    if cfg.normalize_advantages:
        advantages = normalize_advantages(advantages, mask)
    prepared = {
        "observations": prompts,
        "actions": actions,
        "completion_mask": mask,
        "old_log_probs": old_log_probs,
        "old_values": old_values,
        "advantages": advantages,
        "returns": returns,
        "metrics": metrics,
        "outputs": outputs,
    }
    if prompt_mask is not None:
        prepared["prompt_mask"] = prompt_mask
    return prepared


def token_loss(trainer: Any, model: Any, batch: dict[str, Any]):
    """The minibatch loss (module docstring) as a ``(sum, count)`` term over real tokens, and its metrics."""
    cfg = trainer.config
    mask = batch["completion_mask"]
    log_probs, entropy, values = score_tokens_and_values(
        model, batch["observations"], batch["actions"], temperature=cfg.temperature,
        prompt_mask=batch.get("prompt_mask"), who=type(trainer).__name__,
    )
    old = batch["old_log_probs"]
    surrogate = clipped_surrogate_per_element(log_probs, old, batch["advantages"], cfg.clip_param)
    value_loss = value_loss_per_element(
        values, batch["returns"], batch["old_values"], cfg.clip_param if cfg.clip_value_loss else None
    )
    per_token = surrogate + cfg.vf_coeff * value_loss - cfg.entropy_coeff * entropy
    diagnostics = clipped_surrogate_metrics(log_probs, old, cfg.clip_param, mask)
    return masked_mean_term(per_token, mask), {
        "policy_loss": masked_mean(surrogate, mask),
        "value_loss": masked_mean(value_loss, mask),
        "entropy": masked_mean(entropy, mask),
        "kl_divergence": diagnostics["approx_kl"],
        **diagnostics,
    }


__all__ = [
    "check_prompts",
    "kl_shaped_rewards",
    "last_token",
    "masked_token_gae",
    "prepare_token_batch",
    "score_tokens_and_values",
    "split_value_output",
    "token_loss",
]
