"""Pieces shared by the verifiable digit tasks.

Reward convention (every task reward in this package):

* ``samples`` are the **completion tokens** ``(B, N)``: the columns after the
  prompt, e.g. ``out.tokens[:, P:]`` of a
  :class:`~artifex_rl.models.transformer.GenerationOutput`. Passing the full
  ``(B, P + N)`` tokens is fine too when ``prompt_length=P`` is given as a
  keyword; the first ``P`` columns are then dropped.
* ``conditions`` are the task's targets, as returned by ``sample_prompts``.
* ``completion_mask`` (optional keyword, ``(B, N)`` or ``(B, P + N)``): tokens
  where it is 0 count as PAD. The samplers already write PAD after EOS, so it
  is only needed for completions from elsewhere.
* The answer is the text before the first EOS (the *body*). A completion with
  no EOS inside its ``N`` tokens is malformed.

Rewards are pure ``jnp`` functions of these arrays, so they run under ``jit``
and return ``(B,)`` float32 in ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from artifex_rl.tasks.tokenizer import DigitTokenizer

Array = jax.Array


class Demonstrations(NamedTuple):
    """Teacher-forcing data: prompt + answer per row.

    Attributes:
      tokens: ``(n, P + A)`` int32: the prompt followed by an answer and EOS.
      loss_mask: ``(n, P + A)`` float32: 1 on the answer tokens and the EOS
        (the tokens the model should learn to produce), 0 on the prompt.
        Aligned with :func:`artifex_rl.rl.policies.token_log_probs`, so the
        teacher-forced loss is
        ``-sum(token_log_probs(model(tokens), tokens) * loss_mask) / sum(loss_mask)``.
      prompts: ``(n, P)`` int32 (``tokens[:, :P]``).
      conditions: the rows' targets, as from ``sample_prompts``.
      is_noise: ``(n,)`` bool: rows whose answer was replaced by random digits.
    """

    tokens: Array
    loss_mask: Array
    prompts: Array
    conditions: Array
    is_noise: Array


def as_key(rng: Any) -> Array:
    """A JAX key from a JAX key, an int seed or a ``numpy.random.Generator``."""
    if isinstance(rng, jax.Array):
        return rng
    if isinstance(rng, (int, np.integer)):
        return jax.random.key(int(rng))
    if isinstance(rng, np.random.Generator):
        return jax.random.key(int(rng.integers(0, 2**31 - 1)))
    raise TypeError(f"rng must be a JAX key, an int seed or a numpy Generator, got {type(rng).__name__}")


class ParsedCompletion(NamedTuple):
    """A completion split at its first EOS; all ``(B, ...)``.

    Attributes:
      tokens: ``(B, N)`` completion ids (masked-out ids replaced by PAD).
      in_body: ``(B, N)`` bool: positions before the first EOS (all positions
        when there is none).
      has_eos: ``(B,)`` bool.
      body_length: ``(B,)`` int32: number of tokens before the first EOS.
    """

    tokens: Array
    in_body: Array
    has_eos: Array
    body_length: Array


def parse_completion(tokens: Array, tokenizer: DigitTokenizer) -> ParsedCompletion:
    """Split ``(B, N)`` completion ids at the first EOS."""
    is_eos = tokens == tokenizer.eos_id
    # cumsum > 0 from the first EOS on; the body is everything before it.
    in_body = jnp.cumsum(is_eos, axis=1) == 0
    return ParsedCompletion(
        tokens=tokens,
        in_body=in_body,
        has_eos=jnp.any(is_eos, axis=1),
        body_length=jnp.sum(in_body, axis=1).astype(jnp.int32),
    )


@dataclasses.dataclass(frozen=True)
class CompletionReward:
    """Base of the task rewards: normalises the inputs, then calls :meth:`score`.

    Subclasses implement ``score(parsed, conditions) -> (B,)``. See the module
    docstring for the ``samples`` / ``conditions`` / keyword conventions.
    """

    tokenizer: DigitTokenizer = DigitTokenizer()

    def __call__(
        self,
        samples: Array,
        conditions: Array | None = None,
        *,
        completion_mask: Array | None = None,
        prompt_length: int | None = None,
        **kwargs: Any,
    ) -> Array:
        samples = jnp.asarray(samples)
        if samples.ndim != 2:
            raise ValueError(
                f"{type(self).__name__}: samples must be completion tokens (B, N), got shape {samples.shape}"
            )
        if conditions is None:
            raise ValueError(f"{type(self).__name__} needs conditions (the targets from sample_prompts)")
        if completion_mask is not None:
            completion_mask = jnp.asarray(completion_mask)
            if completion_mask.shape != samples.shape:
                raise ValueError(
                    f"{type(self).__name__}: completion_mask must have the samples' shape "
                    f"{samples.shape}, got {completion_mask.shape}"
                )
        if prompt_length is not None:
            if not 0 <= prompt_length < samples.shape[1]:
                raise ValueError(
                    f"prompt_length must be in [0, {samples.shape[1]}) for samples of shape "
                    f"{samples.shape}, got {prompt_length}"
                )
            samples = samples[:, prompt_length:]
            if completion_mask is not None:
                completion_mask = completion_mask[:, prompt_length:]
        tokens = samples.astype(jnp.int32)
        if completion_mask is not None:
            tokens = jnp.where(completion_mask > 0, tokens, self.tokenizer.pad_id)
        conditions = jnp.asarray(conditions)
        if conditions.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: conditions must have one row per sample "
                f"({tokens.shape[0]}), got shape {conditions.shape}"
            )
        return self.score(parse_completion(tokens, self.tokenizer), conditions).astype(jnp.float32)

    def score(self, parsed: ParsedCompletion, conditions: Array) -> Array:
        raise NotImplementedError


def pad_columns(x: Array, width: int, value: int) -> Array:
    """Right-pad ``(B, N)`` to at least ``width`` columns with ``value``."""
    missing = width - x.shape[1]
    if missing <= 0:
        return x
    return jnp.pad(x, ((0, 0), (0, missing)), constant_values=value)


def well_formed(parsed: ParsedCompletion, tokenizer: DigitTokenizer, num_digits: int) -> Array:
    """``(B,)`` bool: the body is exactly ``num_digits`` digits and an EOS follows."""
    _, is_digit = tokenizer.ids_to_digits(parsed.tokens)
    digits_in_body = jnp.sum(is_digit & parsed.in_body, axis=1)
    return parsed.has_eos & (parsed.body_length == num_digits) & (digits_in_body == num_digits)


@dataclasses.dataclass(frozen=True)
class WellFormedReward(CompletionReward):
    """1.0 when the completion is exactly ``num_digits`` digits then EOS, else 0.0.

    Ignores ``conditions`` (pass any ``(B, ...)`` array or the task's targets).
    """

    num_digits: int = 4

    def score(self, parsed: ParsedCompletion, conditions: Array) -> Array:
        return well_formed(parsed, self.tokenizer, self.num_digits).astype(jnp.float32)


def assemble_demonstrations(
    prompts: Array,
    answer_digits: Array,
    conditions: Array,
    is_noise: Array,
    tokenizer: DigitTokenizer,
) -> Demonstrations:
    """Prompt ``(n, P)`` + answer digit values ``(n, K)`` + EOS -> :class:`Demonstrations`."""
    n, p = prompts.shape
    eos = jnp.full((n, 1), tokenizer.eos_id, jnp.int32)
    answer = jnp.concatenate([tokenizer.digits_to_ids(answer_digits), eos], axis=1)
    tokens = jnp.concatenate([prompts, answer], axis=1)
    loss_mask = jnp.concatenate([jnp.zeros((n, p), jnp.float32), jnp.ones(answer.shape, jnp.float32)], axis=1)
    return Demonstrations(tokens, loss_mask, prompts, conditions, is_noise)


def uniform_ints(uniforms: Array, low: Array | int, high: Array | int) -> Array:
    """Map uniforms in ``[0, 1)`` to integers uniform in ``[low, high]`` (elementwise)."""
    low = jnp.asarray(low, jnp.int32)
    span = jnp.asarray(high, jnp.int32) - low + 1
    # min() guards the float32 rounding of u * span up to span when u is just below 1.
    return low + jnp.minimum(jnp.floor(uniforms * span).astype(jnp.int32), span - 1)


def check_noise(noise: float) -> None:
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be a fraction in [0, 1], got {noise}")
