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

Example::

    demos = task.demonstrations(rng, 256, noise=0.5)
    trainer = AutoregressiveTrainer(model, optax.adam(3e-3))
    metrics = trainer.train_step({"tokens": demos.tokens, "loss_mask": demos.loss_mask})
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from artifex_rl.batches import check_shape, require
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


class AutoregressiveTrainer(Trainer):
    """Next-token (teacher-forced) training with a loss mask; see the module docstring.

    Args: as for :class:`~artifex_rl.Trainer` (``model`` maps tokens
    ``(B, L)`` to logits ``(B, L, V)``, optionally accepting ``mask=``).
    """

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
        if "attention_mask" in batch:
            check_shape("attention_mask", batch["attention_mask"], tokens.shape, who)
            logits = model(tokens, mask=batch["attention_mask"])
        else:
            logits = model(tokens)
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
        return LossTerm(loss * jnp.maximum(count, 1.0), count), {**metrics, "perplexity": jnp.exp(loss)}
