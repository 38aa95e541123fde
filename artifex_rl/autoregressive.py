"""Teacher-forced next-token training of a causal LM, with a loss mask.

:class:`AutoregressiveTrainer` pre-trains the policies that the RL trainers
fine-tune, and is the worked example of subclassing :class:`Trainer`: it
overrides only :meth:`~artifex_rl.Trainer.compute_loss`. Everything else --
the compiled, donated step, ``fit``, logging, checkpoints -- is the base
class's.

A batch holds (``B`` rows of length ``L``):

* ``tokens (B, L)`` int: the full sequences (e.g. prompt + answer + EOS);
* ``loss_mask (B, L)`` float/bool: 1 on the tokens the model must learn to
  *predict* (e.g. the answer and its EOS), 0 elsewhere (prompt, padding).
  The mask is aligned with the token it scores, like
  :func:`artifex_rl.distributions.token_log_probs`: ``loss_mask[:, t]`` weighs
  ``log p(tokens[:, t] | tokens[:, :t])``, predicted from position ``t - 1``.
  Column 0 is predicted by nothing and must be 0;
* optional ``attention_mask (B, L)``: 1 on real tokens, 0 on padding keys,
  passed to the model as ``model(tokens, mask=attention_mask)``.

The loss is the mean negative log-likelihood over the masked tokens::

    loss = -sum_{b,t} m_bt log p(x_bt | x_b,<t) / sum_{b,t} m_bt

so a batch with more target tokens in some rows weighs every *token*
equally (not every row), and prompt tokens (``m = 0``) contribute nothing to
the loss or its gradient. Metrics: ``loss``, ``token_accuracy`` (greedy
next-token prediction == target, over the masked tokens), ``perplexity``
(``exp(loss)``), ``num_target_tokens`` and ``grad_norm``.

Scheduled sampling (Bengio et al., 2015), an option of
:class:`AutoregressiveConfig`: with probability ``p_t`` each *target* input
token (``loss_mask == 1``; prompt tokens are never replaced) is replaced by the
model's own greedy prediction for that position from a first, gradient-free
forward pass on the true tokens; the loss still scores the true tokens.
``p_t = scheduled_sampling_prob * min(1, t / scheduled_sampling_warmup_steps)``
(``t``: steps taken, kept in ``train_state["extra"]["step"]`` and checkpointed).
With ``scheduled_sampling_prob = 0`` (the default) nothing changes.

Example::

    demos = task.demonstrations(rng, 256, noise=0.5)
    trainer = AutoregressiveTrainer(model, optax.adam(3e-3))
    metrics = trainer.train_step({"tokens": demos.tokens, "loss_mask": demos.loss_mask})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from artifex_rl.batches import check_shape, require
from artifex_rl.config import TrainerConfig
from artifex_rl.core.loss_terms import LossTerm
from artifex_rl.distributions import token_log_probs
from artifex_rl.trainer import Trainer

Array = jax.Array


def masked_next_token_loss(logits: Array, tokens: Array, loss_mask: Array) -> tuple[Array, dict[str, Array]]:
    """Mean NLL of the masked tokens and the greedy accuracy on them.

    Args:
      logits: ``(B, L, V)``; ``logits[:, t]`` is the distribution of token ``t + 1``.
      tokens: ``(B, L)`` int targets.
      loss_mask: ``(B, L)``; ``loss_mask[:, t]`` weighs token ``t`` (column 0
        is ignored: nothing predicts the first token).

    Returns:
      ``(loss, metrics)``: the scalar ``-sum(m * log p) / max(sum(m), 1)`` and
      ``{"token_accuracy", "num_target_tokens"}``.
    """
    # Position t predicts token t + 1: drop the last logit and the first target.
    target_logp = token_log_probs(logits, tokens)[:, 1:]
    targets = tokens[:, 1:].astype(jnp.int32)
    mask = loss_mask[:, 1:].astype(jnp.float32)
    # max(., 1): an all-zero mask gives loss 0 (and zero gradient), not NaN.
    count = jnp.sum(mask)
    denom = jnp.maximum(count, 1.0)
    loss = -jnp.sum(target_logp * mask) / denom
    correct = (jnp.argmax(logits[:, :-1], axis=-1) == targets).astype(jnp.float32)
    return loss, {"token_accuracy": jnp.sum(correct * mask) / denom, "num_target_tokens": count}


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoregressiveConfig(TrainerConfig):
    """Settings of :class:`AutoregressiveTrainer` (a plain ``TrainerConfig`` is accepted too).

    Attributes:
      scheduled_sampling_prob: final probability of replacing a target input token by
        the model's greedy prediction (0: pure teacher forcing).
      scheduled_sampling_warmup_steps: steps of its linear warm-up from 0 (0: constant).
    """

    scheduled_sampling_prob: float = 0.0
    scheduled_sampling_warmup_steps: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.scheduled_sampling_prob <= 1.0:
            raise ValueError(
                f"AutoregressiveConfig.scheduled_sampling_prob must be in [0, 1], got {self.scheduled_sampling_prob!r}"
            )
        if not isinstance(self.scheduled_sampling_warmup_steps, int) or self.scheduled_sampling_warmup_steps < 0:
            raise ValueError(
                "AutoregressiveConfig.scheduled_sampling_warmup_steps must be an int >= 0, "
                f"got {self.scheduled_sampling_warmup_steps!r}"
            )


def scheduled_sampling_inputs(tokens: Array, predictions: Array, loss_mask: Array, prob: Array, key: Array) -> Array:
    """Teacher-forced inputs with target tokens replaced by predictions with probability ``prob``.

    Args:
      tokens: ``(B, L)`` true tokens.
      predictions: ``(B, L)`` greedy predictions; ``predictions[:, t]`` predicts
        ``tokens[:, t]`` (column 0 is unused).
      loss_mask: ``(B, L)``; only positions with ``loss_mask > 0`` (and ``t >= 1``) may be replaced.
      prob: scalar replacement probability.
      key: PRNG key.
    """
    replace = (jax.random.uniform(key, tokens.shape) < prob) & (loss_mask > 0)
    replace = replace.at[:, 0].set(False)
    return jnp.where(replace, predictions.astype(tokens.dtype), tokens)


class AutoregressiveTrainer(Trainer):
    """Next-token (teacher-forced) training with a loss mask; see the module docstring.

    Args: as for :class:`~artifex_rl.Trainer` (``model`` maps tokens
    ``(B, L)`` to logits ``(B, L, V)``, optionally accepting ``mask=``);
    ``config`` an :class:`AutoregressiveConfig` or a plain ``TrainerConfig``.
    """

    def _sampling(self) -> tuple[float, int]:
        cfg = self.config
        return getattr(cfg, "scheduled_sampling_prob", 0.0), getattr(cfg, "scheduled_sampling_warmup_steps", 0)

    def init_extra_state(self) -> Any:
        # Only a scheduled-sampling run keeps a step counter (plain runs' checkpoints are unchanged).
        return {"step": jnp.zeros((), jnp.int32)} if self._sampling()[0] > 0 else {}

    def before_update(self, extra, model, batch, rng):
        prob, warmup = self._sampling()
        if prob == 0:
            return extra, batch
        require(batch, ["tokens", "loss_mask"], type(self).__name__)
        frac = 1.0 if warmup == 0 else jnp.minimum(1.0, extra["step"].astype(jnp.float32) / warmup)
        n = jnp.shape(batch["tokens"])[0]
        # Per-row copies of p: the batch keeps one leading axis (minibatches split it).
        return {"step": extra["step"] + 1}, {**batch, "sampling_prob": jnp.full((n,), prob * frac, jnp.float32)}

    def compute_loss(
        self, model: nnx.Module, batch: Mapping[str, Array], rng: Array
    ) -> tuple[Array, dict[str, Array]]:
        who = type(self).__name__
        require(batch, ["tokens", "loss_mask"], who)
        tokens = batch["tokens"]
        if jnp.ndim(tokens) != 2:
            raise ValueError(f"{who}: batch['tokens'] has shape {jnp.shape(tokens)}, expected (B, L)")
        if not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
            raise ValueError(
                f"{who}: batch['tokens'] must hold integer ids, got dtype {jnp.asarray(tokens).dtype}"
            )
        check_shape("loss_mask", batch["loss_mask"], tokens.shape, who)
        def forward(inputs):
            if "attention_mask" in batch:
                return model(inputs, mask=batch["attention_mask"])
            return model(inputs)

        if "attention_mask" in batch:
            check_shape("attention_mask", batch["attention_mask"], tokens.shape, who)
        extra_metrics = {}
        if "sampling_prob" in batch:
            first = jax.lax.stop_gradient(forward(tokens))
            # logits[:, t - 1] predict token t: shift the greedy predictions right by one.
            greedy = jnp.argmax(first, axis=-1)
            predictions = jnp.concatenate([tokens[:, :1], greedy[:, :-1].astype(tokens.dtype)], axis=1)
            inputs = scheduled_sampling_inputs(tokens, predictions, batch["loss_mask"], batch["sampling_prob"][0], rng)
            extra_metrics = {"sampling_prob": batch["sampling_prob"][0],
                             "replaced_fraction": jnp.mean((inputs != tokens).astype(jnp.float32))}
            logits = forward(inputs)
        else:
            logits = forward(tokens)
        b, length = tokens.shape
        if jnp.shape(logits)[:2] != (b, length) or jnp.ndim(logits) != 3:
            raise ValueError(
                f"{who}: the model must map tokens {tokens.shape} to logits (B, L, V) = ({b}, {length}, V), "
                f"got {jnp.shape(logits)}"
            )
        loss, metrics = masked_next_token_loss(logits, tokens, batch["loss_mask"])
        # (sum, count): the mean NLL per target token of the whole batch, exact
        # under gradient accumulation whatever each micro-batch's token count.
        count = metrics["num_target_tokens"]
        return LossTerm(loss * jnp.maximum(count, 1.0), count), {
            **metrics, **extra_metrics, "perplexity": jnp.exp(loss)}
