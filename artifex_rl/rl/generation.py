"""The generation layer: sampled completions, the sampler protocol, and "sample, then score".

Long because the sampler contract, its checks and the two scoring paths (the
sampler's own log-probs and the trainer's recomputed ones) must stay in one
place that GRPO, token PPO and the LM recipes all share.

Every piece of code that samples completions from a language-model policy and
rewards them (GRPO's online step, the LM recipes' evaluator, completion source
and preference pairs) goes through :func:`sample_and_score`; a trainer scores
completions it trains on with :func:`score_completions`. The pieces:

* :class:`Completions` -- prompt-free ``(B, N)`` tokens, completion mask and
  per-token log-probs, as every sampler returns them.
* :class:`SampleFn` -- the sampler protocol, ``sample_fn(model, prompts, key,
  *, prompt_mask=None) -> Completions``. :class:`artifex_rl.models.sampling.TokenSampler`
  implements it for any causal LM (a KV cache for models with the
  :class:`~artifex_rl.models.sampling.DecoderLM` methods, a recompute loop for
  a plain ``model(tokens) -> logits``).
* :func:`sampling_logits` -- the distribution a sampler draws from:
  ``logits / temperature``, restricted to the ``top_k`` largest. Samplers
  return log-probs under it and :func:`score_completions` scores under it, so
  sampling and training use ONE distribution (as TRL scores with
  ``logits / temperature``) and the first importance ratio is exactly 1.

Conventions: prompts share one length ``P`` (left-pad shorter ones and pass
``prompt_mask``, 1 = real token); a reward function is called as
``reward_fn(tokens (B, N), conditions, completion_mask=(B, N)) -> (B,)``.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from artifex_rl.distributions import categorical_entropy, categorical_log_prob
from artifex_rl.rewards import RewardFunctionError, call_reward, reward_name

Array = jax.Array

#: Errors raised when traced code needs a concrete value: the reward function
#: is plain Python/numpy and can only run on the host.
HOST_ONLY_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


class Completions(NamedTuple):
    """Sampled completions, without their prompts (``B`` rows, ``N`` new tokens).

    Attributes:
      tokens: ``(B, N)`` int32 completion tokens; after a row's first EOS they
        hold the sampler's ``pad_id``.
      completion_mask: ``(B, N)`` float32: 1 on generated tokens up to and
        including the first EOS, 0 after it.
      log_probs: ``(B, N)`` float32: log-probability of each token under the
        distribution it was sampled from (see :func:`sampling_logits`); 0
        where ``completion_mask`` is 0.
    """

    tokens: Array
    completion_mask: Array
    log_probs: Array

    @property
    def lengths(self) -> Array:
        """``(B,)`` int32: completion tokens per row, EOS included."""
        return jnp.sum(self.completion_mask, axis=-1).astype(jnp.int32)

    def full_tokens(self, prompts: Array) -> Array:
        """``(B, P + N)``: the ``(B, P)`` prompts followed by the completions."""
        return jnp.concatenate([jnp.asarray(prompts, jnp.int32), self.tokens], axis=1)

    def full_completion_mask(self, prompt_length: int) -> Array:
        """``(B, P + N)``: the completion mask after ``P`` zero (prompt) columns."""
        return _after_zeros(self.completion_mask, prompt_length)

    def full_log_probs(self, prompt_length: int) -> Array:
        """``(B, P + N)``: the log-probs after ``P`` zero columns, aligned like
        :func:`artifex_rl.rl.policies.token_log_probs` of the full sequence."""
        return _after_zeros(self.log_probs, prompt_length)

    @classmethod
    def from_full(cls, tokens: Array, completion_mask: Array, log_probs: Array, prompt_length: int) -> Completions:
        """Drop the first ``prompt_length`` columns of ``(B, P + N)`` arrays."""
        p = prompt_length
        return cls(tokens[:, p:], completion_mask[:, p:], log_probs[:, p:])


def _after_zeros(x: Array, columns: int) -> Array:
    return jnp.concatenate([jnp.zeros((x.shape[0], columns), x.dtype), x], axis=1)


@runtime_checkable
class SampleFn(Protocol):
    """How completions are sampled: ``sample_fn(model, prompts, key, *, prompt_mask=None) -> Completions``.

    The contract (what :class:`~artifex_rl.rl.GRPOTrainer` and
    :func:`sample_and_score` rely on):

    * **Pure and jittable.** It runs inside the trainer's compiled step: no
      host reads, no Python side effects; shapes depend only on input shapes.
      ``N`` (the number of new tokens) is fixed by the sampler, not by the data.
    * **Inputs.** ``model``: the policy (an ``nnx.Module`` rebuilt from the
      current parameters); ``prompts``: ``(B, P)`` int token ids;
      ``key``: a PRNG key (the same key must give the same completions);
      ``prompt_mask``: optional ``(B, P)``, 1 on real prompt tokens and 0 on
      (left) padding. A sampler without padding support may leave the keyword
      out: it is passed only when not ``None``.
    * **Output.** A :class:`Completions` with ``(B, N)`` arrays: tokens (pad
      after the first EOS), completion mask (1 up to and including EOS) and
      per-token log-probs, 0 where masked.
    * **On-policy log-probs.** ``log_probs`` must be the log-probabilities of
      the sampled tokens under the distribution the trainer optimises:
      ``log_softmax(model(full_tokens) / temperature)`` at the trainer's
      ``temperature`` (see :func:`score_completions`). Then the first
      importance ratio of a fresh rollout is 1; anything else is an
      off-policy update with no correction.
    """

    def __call__(
        self, model: Any, prompts: Array, key: Array, *, prompt_mask: Array | None = None
    ) -> Completions: ...


# --------------------------------------------------------------------------- #
# The token distribution
# --------------------------------------------------------------------------- #
def sampling_logits(logits: Array, temperature: float = 1.0, top_k: int | None = None) -> Array:
    """Logits of the distribution a sampler draws from: ``logits / T``, outside the top ``k`` at ``-inf``.

    Args:
      logits: ``(..., V)`` raw model logits.
      temperature: ``T > 0`` (greedy decoding, ``T = 0``, is not a distribution).
      top_k: keep the ``k`` largest logits per row; ``None``: all.

    Returns:
      ``(..., V)`` float32 logits; ``log_softmax`` of them is the sampling
      distribution's log-probability.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to define a distribution, got {temperature}")
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        if not 1 <= top_k <= logits.shape[-1]:
            raise ValueError(f"top_k must be in [1, vocab_size={logits.shape[-1]}], got {top_k}")
        kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth_largest, logits, -jnp.inf)
    return logits


def accepts_mask(model: Any) -> bool:
    """Whether ``model.__call__`` takes a ``mask=`` keyword (or ``**kwargs``)."""
    try:
        params = inspect.signature(model).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the call decide
        return True
    return any(p.name == "mask" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def forward(model: Any, tokens: Array, mask: Array | None = None) -> Array:
    """``model(tokens)``, or ``model(tokens, mask=mask)`` when a padding mask is given.

    Raises:
      TypeError: ``mask`` is given but the model's ``__call__`` has no ``mask``
        keyword (such a model can only handle equal-length, unpadded prompts).
    """
    if mask is None:
        return model(tokens)
    if not accepts_mask(model):
        raise TypeError(
            f"a prompt_mask of shape {jnp.shape(mask)} was given but {type(model).__name__}.__call__ takes no "
            "mask= keyword; a model without padding support needs equal-length prompts (prompt_mask=None)"
        )
    return model(tokens, mask=mask)


def score_completions(
    model: Any,
    prompts: Array,
    completions: Array,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    prompt_mask: Array | None = None,
) -> tuple[Array, Array]:
    """Per-token log-probs and entropies of ``completions`` under the sampling distribution.

    One causal forward over ``concat(prompts, completions)``; the logits
    predicting completion token ``t`` (position ``P + t - 1``) go through
    :func:`sampling_logits`. With ``temperature=1`` and no ``top_k`` this is
    the model's own distribution.

    Args:
      model: ``model(tokens (B, L)) -> logits (B, L, V)`` (with ``mask=`` when
        ``prompt_mask`` is given).
      prompts: ``(B, P)`` int tokens, ``P >= 1``.
      completions: ``(B, N)`` int tokens.
      temperature, top_k: the sampler's settings.
      prompt_mask: optional ``(B, P)`` padding mask of the prompts; the model
        then gets ``mask = concat(prompt_mask, ones(B, N))``, as the samplers do.

    Returns:
      ``(log_probs, entropies)``, each ``(B, N)`` float32.
    """
    p = prompts.shape[1]
    if p < 1:
        raise ValueError(f"prompts must hold at least one token, got shape {prompts.shape}")
    tokens, mask = full_sequence(prompts, completions, prompt_mask)
    return completion_scores(forward(model, tokens, mask), tokens, p, temperature=temperature, top_k=top_k)


def full_sequence(prompts: Array, completions: Array, prompt_mask: Array | None = None) -> tuple[Array, Array | None]:
    """``(B, P + N)`` tokens ``concat(prompts, completions)`` and the model's key mask
    ``concat(prompt_mask, ones)`` (``None`` without a prompt mask)."""
    tokens = jnp.concatenate([prompts, completions.astype(prompts.dtype)], axis=1)
    if prompt_mask is None:
        return tokens, None
    return tokens, jnp.concatenate([prompt_mask, jnp.ones(completions.shape, prompt_mask.dtype)], axis=1)


def completion_scores(
    logits: Array, tokens: Array, prompt_length: int, *, temperature: float = 1.0, top_k: int | None = None
) -> tuple[Array, Array]:
    """Per-token log-probs and entropies ``(B, N)`` of the completion part of ``(B, P + N)`` tokens,
    from the model's ``(B, P + N, V)`` logits of the whole sequence (see :func:`score_completions`)."""
    p = prompt_length
    # Positions P-1 .. P+N-2 predict the completion tokens: the softmax over the
    # vocabulary runs on those N rows only.
    window = sampling_logits(logits[:, p - 1 : -1], temperature, top_k)
    return categorical_log_prob(window, tokens[:, p:]), categorical_entropy(window)


# --------------------------------------------------------------------------- #
# Sample, then score
# --------------------------------------------------------------------------- #
class ScoredCompletions(NamedTuple):
    """Completions of ``G`` copies of each prompt, with their rewards (``B = num_prompts x G``).

    Attributes:
      prompts: ``(B, P)``: each prompt repeated ``G`` times, consecutively.
      prompt_mask: ``(B, P)`` or ``None``.
      conditions: the reward's conditions repeated like the prompts (leading axis ``B``).
      completions: the sampled :class:`Completions`, ``(B, N)`` each.
      rewards: ``(B,)`` float.
    """

    prompts: Array
    prompt_mask: Array | None
    conditions: Any
    completions: Completions
    rewards: Array

    def as_batch(self) -> dict[str, Array]:
        """The RL trainers' token batch: ``observations``, ``actions``,
        ``completion_mask``, ``log_probs``, ``rewards`` (and ``prompt_mask``)."""
        batch = {
            "observations": self.prompts,
            "actions": self.completions.tokens,
            "completion_mask": self.completions.completion_mask,
            "log_probs": self.completions.log_probs,
            "rewards": self.rewards,
        }
        if self.prompt_mask is not None:
            batch["prompt_mask"] = self.prompt_mask
        return batch


class RewardNotJittableError(TypeError):
    """A reward function that needs concrete values was called inside a compiled function."""


def repeat_groups(tree: Any, group_size: int) -> Any:
    """Repeat every leading-axis row of each leaf ``group_size`` times, consecutively."""
    return jax.tree.map(lambda x: jnp.repeat(x, group_size, axis=0), tree)


def call_sample_fn(
    sample_fn: SampleFn, model: Any, prompts: Array, key: Array, prompt_mask: Array | None = None
) -> Completions:
    """Call ``sample_fn`` (``prompt_mask`` only when given) and check what it returns."""
    if prompt_mask is None:
        out = sample_fn(model, prompts, key)
    else:
        out = sample_fn(model, prompts, key, prompt_mask=prompt_mask)
    if not isinstance(out, Completions):
        raise TypeError(
            f"sample_fn {sample_fn!r} returned {type(out).__name__}; a SampleFn returns "
            "artifex_rl.rl.generation.Completions(tokens, completion_mask, log_probs), each (B, N) without "
            "the prompt (Completions.from_full converts (B, P + N) arrays)"
        )
    b = prompts.shape[0]
    shape = jnp.shape(out.tokens)
    if len(shape) != 2 or shape[0] != b:
        raise ValueError(f"sample_fn returned tokens of shape {shape}, expected ({b}, N) for prompts {prompts.shape}")
    for name in ("completion_mask", "log_probs"):
        if jnp.shape(getattr(out, name)) != shape:
            raise ValueError(
                f"sample_fn returned {name} of shape {jnp.shape(getattr(out, name))}, expected {shape} like its tokens"
            )
    return out


def sample_groups(
    sample_fn: SampleFn,
    model: Any,
    prompts: Array,
    key: Array,
    group_size: int,
    *,
    prompt_mask: Array | None = None,
) -> tuple[Array, Array | None, Completions]:
    """Repeat each ``(num_prompts, P)`` prompt ``group_size`` times and sample one completion per copy.

    Returns ``(prompts, prompt_mask, completions)`` with ``num_prompts x group_size`` rows.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    prompts = repeat_groups(jnp.asarray(prompts), group_size)
    if prompt_mask is not None:
        prompt_mask = repeat_groups(jnp.asarray(prompt_mask), group_size)
    return prompts, prompt_mask, call_sample_fn(sample_fn, model, prompts, key, prompt_mask)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def reward_is_jittable(reward_fn: Any, completions: Completions, conditions: Any) -> bool:
    """Whether ``reward_fn`` traces with abstract inputs shaped like these (``jax.eval_shape``).

    Only the reward runs: an error of the model or the sampler is never
    taken for a host-only reward. Errors other than "needs a concrete value"
    propagate (they are bugs of the reward, whatever runs it).
    """
    def call(tokens, conditions, mask):
        return reward_fn(tokens, conditions, completion_mask=mask)

    try:
        jax.eval_shape(
            call, *_abstract((completions.tokens, conditions, completions.completion_mask))
        )
    except HOST_ONLY_ERRORS:
        return False
    except Exception as exc:  # noqa: BLE001 - the user's reward failed: name it
        raise RewardFunctionError(
            f"reward function {reward_name(reward_fn)} ({reward_fn!r}) raised {type(exc).__name__} "
            f"while traced with abstract inputs: {exc}"
        ) from exc
    return True


def score_rewards(reward_fn: Any, completions: Completions, conditions: Any) -> Array:
    """``reward_fn(tokens, conditions, completion_mask=mask)``, checked: ``(B,)`` float (NaN where unscorable).

    Raises:
      RewardNotJittableError: inside a trace, when the reward needs concrete values.
      RewardFunctionError: the reward function raised (names it).
      ValueError: a wrong shape. NaN/inf/None rewards are accepted: unscorable samples.
    """
    if isinstance(completions.tokens, jax.core.Tracer) and not reward_is_jittable(
        reward_fn, completions, conditions
    ):
        raise RewardNotJittableError(
            f"reward function {reward_fn!r} cannot be traced by jax (it needs concrete values), but it was "
            "called inside a compiled function. Make it a jnp function of (tokens, conditions, "
            "completion_mask), or call it outside jit: GRPOTrainer.train_step/train_steps do that "
            "(compiled sampling, rewards on the host, compiled update)"
        )
    # Checked in artifex_rl.rewards: an exception names the function, None/NaN mark unscorable samples.
    return call_reward(reward_fn, completions.tokens, conditions, completion_mask=completions.completion_mask)


def sample_and_score(
    sample_fn: SampleFn,
    reward_fn: Any,
    model: Any,
    prompts: Array,
    conditions: Any,
    key: Array,
    group_size: int = 1,
    prompt_mask: Array | None = None,
) -> ScoredCompletions:
    """Sample ``group_size`` completions per prompt and reward them: the one sample-and-score path.

    Jittable when ``sample_fn`` and ``reward_fn`` are (a reward that needs
    concrete values raises :class:`RewardNotJittableError` under ``jit``).

    Args:
      sample_fn: a :class:`SampleFn`.
      reward_fn: ``reward_fn(tokens (B, N), conditions, completion_mask=(B, N)) -> (B,)``.
      model: the policy.
      prompts: ``(num_prompts, P)`` int tokens.
      conditions: what the reward needs per prompt (a pytree with leading
        axis ``num_prompts``, or ``None``); repeated like the prompts.
      key: PRNG key of the sampling.
      group_size: completions per prompt ``G``; row ``i`` of the outputs
        belongs to prompt ``i // G``.
      prompt_mask: optional ``(num_prompts, P)`` padding mask (1 = real).

    Returns:
      :class:`ScoredCompletions` with ``B = num_prompts x G`` rows.
    """
    prompts, prompt_mask, completions = sample_groups(
        sample_fn, model, prompts, key, group_size, prompt_mask=prompt_mask
    )
    conditions = repeat_groups(conditions, group_size)
    rewards = score_rewards(reward_fn, completions, conditions)
    return ScoredCompletions(prompts, prompt_mask, conditions, completions, rewards)
