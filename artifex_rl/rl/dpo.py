"""DPO and its variants, with policy log-probs computed by the model so gradients flow.

The seeds feed DPO precomputed ``chosen_log_probs``/``rejected_log_probs``;
such a batch has no path from the loss back to the parameters, so the
trainer asks for the sequences instead (the pure
:func:`~artifex_rl.rl.utils.compute_dpo_loss` still evaluates the loss from
log-probs). A batch holds preference pairs sharing a prompt:

* ``prompts (B, P)`` (or ``observations``), ``chosen (B, N)`` and
  ``rejected (B, N)`` completion tokens, optional ``chosen_mask`` and
  ``rejected_mask (B, N)`` (1 on real completion tokens);
* optional ``ref_chosen_log_probs``/``ref_rejected_log_probs (B,)``
  (sequence sums under the reference); without them the frozen reference
  model scores the pair inside the step (by default a copy of the policy at
  construction); SimPO (``reference_free=True``) needs neither.

With ``policy="categorical"``/``"gaussian"``, ``chosen``/``rejected`` are
single actions for each observation and no masks are used.

With ``policy=`` a :class:`~artifex_rl.distributions.chain.PreferenceLikelihood`
(Diffusion-DPO: :class:`artifex_rl.generative.DenoisingLikelihood`),
``chosen``/``rejected`` are images ``(B, H, W, C)``, ``observations (B,)``
their conditions, and the log-likelihoods are its stand-ins, computed with
per-pair randomness drawn once in ``prepare_batch`` (or given in the batch as
``timesteps``/``noise``) and shared by the policy and the reference.

Sequence log-probs are sums over completion tokens (the paper's
definition); chosen and rejected run through the model as one ``(2B, L)``
batch: one forward pass per sequence per step. The loss
(``sigmoid``/``hinge``/``ipo``/``robust``, SimPO) is
:func:`~artifex_rl.rl.utils.compute_dpo_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from artifex_rl.batches import canonical, check_leading, check_shape, require
from artifex_rl.core.loss_terms import LossTerm
from artifex_rl.distributions import CategoricalPolicy, PolicyHead, score_sequences
from artifex_rl.distributions.chain import PreferenceLikelihood
from artifex_rl.events import Callback
from artifex_rl.rl.base import REFERENCE, RLTrainer
from artifex_rl.rl.configs import DPOConfig
from artifex_rl.rl.losses import compute_dpo_loss, masked_sum

Array = jax.Array


class DPOTrainer(RLTrainer):
    """Direct Preference Optimization (see the module docstring for the batch).

    Args:
      model, optimizer, config, callbacks, policy: as for :class:`RLTrainer`.
      reference_model: ``"copy"`` (default): a frozen copy of the policy as
        it is now; a module to use instead; ``None``: reference log-probs
        must come with each batch (or ``reference_free=True``).

    Metrics: ``loss`` (= ``dpo_loss``, plus ``nll_coeff * chosen_nll`` when
    ``nll_coeff > 0``), ``chosen_reward``,
    ``rejected_reward``, ``reward_margin``, ``reward_accuracy``,
    ``chosen_log_prob``, ``rejected_log_prob`` (and ``grad_norm``, see TrainerConfig).
    """

    config_class = DPOConfig
    config: DPOConfig

    def __init__(
        self,
        model: nnx.Module,
        optimizer: nnx.Optimizer | optax.GradientTransformation,
        config: DPOConfig | None = None,
        *,
        reference_model: nnx.Module | str | None = "copy",
        policy: str | PolicyHead | None = None,
        callbacks: Sequence[Callback] = (),
        mesh: jax.sharding.Mesh | None = None,
    ):
        super().__init__(model, optimizer, config, policy=policy, callbacks=callbacks, mesh=mesh)
        if not self.config.reference_free:
            if reference_model == "copy":
                self.set_reference_model(None)
            elif reference_model is not None:
                self.set_reference_model(reference_model)

    def index_keys(self, batch):
        if "chosen" not in batch or isinstance(self.policy, PreferenceLikelihood):
            return []
        if self.is_tokens(self.resolve_policy(batch.get("chosen"))):
            return [("observations", None, "token"), ("chosen", "chosen_mask", "token"),
                    ("rejected", "rejected_mask", "token")]
        return [("chosen", None, "action"), ("rejected", None, "action")]

    def prepare_batch(self, model, batch, rng, frozen) -> dict[str, Any]:
        batch = canonical(batch)
        who = type(self).__name__
        if "chosen" not in batch and "chosen_log_probs" in batch:
            raise ValueError(
                f"{who}: the batch holds only precomputed policy log-probs ('chosen_log_probs'), "
                "which carry no gradient to the model. Pass the sequences instead: 'prompts' (B, P), "
                "'chosen' (B, N), 'rejected' (B, N) tokens with optional 'chosen_mask'/'rejected_mask' "
                "(and 'ref_chosen_log_probs'/'ref_rejected_log_probs' if you have them). "
                "To evaluate the loss from log-probs alone use artifex_rl.rl.utils.compute_dpo_loss."
            )
        require(batch, ["observations", "chosen", "rejected"], who)
        obs, chosen, rejected = batch["observations"], batch["chosen"], batch["rejected"]
        head = self.resolve_policy(chosen)
        b = jnp.shape(chosen)[0]
        check_shape("rejected", rejected, jnp.shape(chosen), who)
        prepared = {"observations": obs, "chosen": chosen, "rejected": rejected}
        if isinstance(head, PreferenceLikelihood):  # Diffusion-DPO: one draw per pair, shared with the reference
            drawn = head.draw(rng, b)
            prepared["draw"] = {k: jnp.asarray(batch[k]) if k in batch else v for k, v in drawn.items()}
            for key, value in prepared["draw"].items():
                check_shape(key, value, drawn[key].shape, who)
        if not self.is_tokens(head):
            check_leading("observations", obs, (b,), who)
        if self.is_tokens(head):
            check_shape("prompts", obs, (b, None), who)
            check_shape("chosen", chosen, (b, None), who)
            for key in ("chosen_mask", "rejected_mask"):
                mask = jnp.asarray(batch.get(key, jnp.ones(chosen.shape)), jnp.float32)
                check_shape(key, mask, chosen.shape, who)
                prepared[key] = mask

        if not self.config.reference_free:
            if "ref_chosen_log_probs" in batch:
                require(batch, ["ref_chosen_log_probs", "ref_rejected_log_probs"], who)
                for key in ("ref_chosen_log_probs", "ref_rejected_log_probs"):
                    check_shape(key, batch[key], (b,), who)
                    prepared[key] = jnp.asarray(batch[key], jnp.float32)
            elif REFERENCE in frozen:
                ref_c, ref_r = self._sequence_log_probs(frozen[REFERENCE], prepared)
                prepared["ref_chosen_log_probs"] = jax.lax.stop_gradient(ref_c)
                prepared["ref_rejected_log_probs"] = jax.lax.stop_gradient(ref_r)
            else:
                raise ValueError(
                    f"{who}: no reference log-probs: pass 'ref_chosen_log_probs' and "
                    "'ref_rejected_log_probs' in the batch, give the trainer a reference_model, "
                    "or use DPOConfig(reference_free=True) (SimPO)"
                )
        return prepared

    def _sequence_log_probs(self, model, batch) -> tuple[Array, Array]:
        """Summed log-probs of chosen and rejected, from one forward pass over both."""
        b = batch["chosen"].shape[0]
        head = self.resolve_policy(batch["chosen"])
        if isinstance(head, PreferenceLikelihood):
            return head.pair_log_likelihoods(model, batch["observations"], batch["chosen"], batch["rejected"],
                                             batch["draw"])
        if self.is_tokens(head):
            prompts = jnp.concatenate([batch["observations"]] * 2, axis=0)
            completions = jnp.concatenate([batch["chosen"], batch["rejected"]], axis=0)
            masks = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
            token_logp, _ = score_sequences(model, prompts, completions)
            seq = masked_sum(token_logp, masks, axis=-1)
        else:
            output = model(batch["observations"])
            self.check_output_fits(head, output)
            seq = jnp.concatenate([head.log_prob(output, batch["chosen"]), head.log_prob(output, batch["rejected"])])
        return seq[:b], seq[b:]

    def compute_loss(self, model, batch, rng):
        cfg = self.config
        chosen, rejected = self._sequence_log_probs(model, batch)
        head = self.resolve_policy(batch["chosen"])
        action_metrics = {}
        if isinstance(head, CategoricalPolicy):  # a device batch is not read on the host: count bad actions here
            logits = model(batch["observations"])
            both = jnp.concatenate([jnp.ravel(batch["chosen"]), jnp.ravel(batch["rejected"])])
            action_metrics = self.action_metrics(head, logits, both)
        tokens_policy = self.is_tokens(self.resolve_policy(batch["chosen"]))
        lengths = {}
        if cfg.reference_free and tokens_policy:
            lengths = {
                "chosen_lengths": jnp.sum(batch["chosen_mask"], axis=-1),
                "rejected_lengths": jnp.sum(batch["rejected_mask"], axis=-1),
            }
        elif cfg.reference_free:
            ones = jnp.ones_like(chosen)
            lengths = {"chosen_lengths": ones, "rejected_lengths": ones}
        loss, metrics = compute_dpo_loss(
            chosen,
            rejected,
            batch.get("ref_chosen_log_probs"),
            batch.get("ref_rejected_log_probs"),
            beta=cfg.beta,
            label_smoothing=cfg.label_smoothing,
            loss_type=cfg.loss_type,
            reference_free=cfg.reference_free,
            simpo_gamma=cfg.simpo_gamma,
            **lengths,
        )
        dpo_loss, extra = loss, {}
        # Each term as (sum, count), so gradient accumulation stays exact: the
        # pair loss is a mean over pairs, the NLL a mean over chosen tokens.
        pairs = chosen.shape[0]
        loss = (LossTerm(dpo_loss * pairs, jnp.asarray(pairs, jnp.float32)),)
        if cfg.nll_coeff > 0:
            # Per-token NLL of the chosen completions (RPO): their summed
            # log-probs over the batch divided by their token count.
            tokens = jnp.sum(batch["chosen_mask"]) if tokens_policy else jnp.asarray(pairs, jnp.float32)
            nll = -jnp.sum(chosen) / jnp.maximum(tokens, 1.0)
            loss = (*loss, LossTerm(-cfg.nll_coeff * jnp.sum(chosen), tokens))
            extra = {"chosen_nll": nll}
        return loss, {
            "dpo_loss": dpo_loss,
            "chosen_log_prob": jnp.mean(chosen),
            "rejected_log_prob": jnp.mean(rejected),
            **metrics,
            **extra,
            **action_metrics,
        }
