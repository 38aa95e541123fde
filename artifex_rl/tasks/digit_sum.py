"""DigitSum: write ``num_digits`` digits whose sum is the target.

Prompt (``P = 4``): ``BOS t u SEP`` where ``t u`` are the two decimal digits of
the target ``N`` in ``[0, max_target]`` (zero-padded, ``max_target <= 99``).
Example: ``^17|`` asks for four digits summing to 17; ``4607$`` is correct.

Reward (``(B,)`` in ``[0, 1]``), with ``s`` the sum of the digits before the
first EOS and ``closeness(s) = max(0, 1 - |s - N| / 10)``:

* well-formed (exactly ``num_digits`` digits, then EOS): ``closeness(s)``;
* malformed but with at least one digit before EOS (or before the end when
  there is no EOS): ``closeness(s) / 2``;
* no digit at all: 0.

It is composed as ``0.5 * strict + 0.5 * lenient`` of two
:class:`DigitSumCloseness` terms (``strict`` gives 0 unless well-formed), so a
well-formed answer earns the full closeness and a malformed one half of it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from artifex_rl.rewards import CompositeReward
from artifex_rl.tasks.base import (
    CompletionReward,
    Demonstrations,
    ParsedCompletion,
    as_key,
    assemble_demonstrations,
    check_noise,
    uniform_ints,
    well_formed,
)
from artifex_rl.tasks.tokenizer import DigitTokenizer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DigitSumCloseness(CompletionReward):
    """``max(0, 1 - |sum of body digits - N| / 10)``; ``conditions`` = targets ``N`` ``(B,)``.

    ``strict=True`` scores 0 unless the completion is well-formed; otherwise
    any completion with at least one digit in its body is scored.
    """

    num_digits: int = 4
    strict: bool = False

    def score(self, parsed: ParsedCompletion, conditions: Array) -> Array:
        if conditions.ndim != 1:
            raise ValueError(
                f"DigitSumCloseness: conditions must be targets (B,), got shape {conditions.shape}"
            )
        values, is_digit = self.tokenizer.ids_to_digits(parsed.tokens)
        counted = is_digit & parsed.in_body
        total = jnp.sum(jnp.where(counted, values, 0), axis=1)
        closeness = jnp.maximum(0.0, 1.0 - jnp.abs(total - conditions) / 10.0)
        if self.strict:
            ok = well_formed(parsed, self.tokenizer, self.num_digits)
        else:
            ok = jnp.any(counted, axis=1)
        return jnp.where(ok, closeness, 0.0)


@dataclasses.dataclass(frozen=True)
class DigitSumTask:
    """Prompts, reward and demonstrations of the DigitSum task (see module docstring).

    Attributes:
      num_digits: digits in an answer (default 4).
      max_target: targets are uniform in ``[0, max_target]``; at most
        ``9 * num_digits`` (reachable) and 99 (two prompt digits).
      tokenizer: the shared :class:`DigitTokenizer`.
    """

    num_digits: int = 4
    max_target: int = 36
    tokenizer: DigitTokenizer = DigitTokenizer()

    def __post_init__(self) -> None:
        if self.num_digits < 1:
            raise ValueError(f"num_digits must be >= 1, got {self.num_digits}")
        if not 0 <= self.max_target <= min(99, 9 * self.num_digits):
            raise ValueError(
                f"max_target must be in [0, {min(99, 9 * self.num_digits)}] for "
                f"num_digits={self.num_digits}, got {self.max_target}"
            )

    @property
    def prompt_length(self) -> int:
        """``P``: BOS, two target digits, SEP."""
        return 4

    @property
    def answer_length(self) -> int:
        """Tokens of a correct completion, EOS included: the ``max_new_tokens`` to sample."""
        return self.num_digits + 1

    def encode_prompts(self, targets: Array) -> Array:
        """Targets ``(n,)`` -> prompts ``(n, 4)`` int32."""
        targets = jnp.asarray(targets, jnp.int32)
        n = targets.shape[0]
        tok = self.tokenizer
        return jnp.concatenate(
            [
                jnp.full((n, 1), tok.bos_id, jnp.int32),
                tok.digits_to_ids(targets // 10)[:, None],
                tok.digits_to_ids(targets % 10)[:, None],
                jnp.full((n, 1), tok.sep_id, jnp.int32),
            ],
            axis=1,
        )

    def sample_prompts(self, rng: Any, n: int) -> tuple[Array, Array]:
        """``n`` random prompts ``(n, 4)`` int32 and their targets ``(n,)`` int32.

        ``rng``: a JAX key (then jittable with ``n`` static), an int seed or a
        ``numpy.random.Generator``.
        """
        return self._sample_prompts(as_key(rng), n)

    @functools.partial(jax.jit, static_argnums=(0, 2))
    def _sample_prompts(self, key: Array, n: int) -> tuple[Array, Array]:
        return self._prompts_from_uniforms(jax.random.uniform(key, (n,)))

    def _prompts_from_uniforms(self, uniforms: Array) -> tuple[Array, Array]:
        targets = uniform_ints(uniforms, 0, self.max_target)
        return self.encode_prompts(targets), targets

    @functools.cached_property
    def reward_fn(self) -> CompositeReward:
        """The task reward: ``0.5 * strict + 0.5 * lenient`` closeness (module docstring)."""
        strict = DigitSumCloseness(self.tokenizer, num_digits=self.num_digits, strict=True)
        lenient = DigitSumCloseness(self.tokenizer, num_digits=self.num_digits, strict=False)
        return CompositeReward([strict, lenient], weights=[0.5, 0.5])

    def correct_answers(self, rng: Any, targets: Array) -> Array:
        """A random correct answer per target: digit values ``(n, num_digits)`` summing to it.

        Digit ``i`` is uniform over the values that still leave the remainder
        reachable by the remaining digits.
        """
        targets = jnp.asarray(targets, jnp.int32)
        uniforms = jax.random.uniform(as_key(rng), (targets.shape[0], self.num_digits))
        return self._answers_from_uniforms(targets, uniforms)

    def _answers_from_uniforms(self, targets: Array, uniforms: Array) -> Array:
        remaining = targets
        digits = []
        for i in range(self.num_digits):
            left_after = self.num_digits - 1 - i
            low = jnp.maximum(0, remaining - 9 * left_after)
            high = jnp.minimum(9, remaining)
            d = uniform_ints(uniforms[:, i], low, high)
            digits.append(d)
            remaining = remaining - d
        return jnp.stack(digits, axis=1)

    def demonstrations(self, rng: Any, n: int, *, noise: float = 0.0) -> Demonstrations:
        """``n`` teacher-forcing rows; a ``noise`` fraction answer with random digits.

        Noise rows stay well-formed (``num_digits`` uniform digits, then EOS),
        so a model pre-trained on them learns the format but only partly the
        arithmetic: raising ``noise`` lowers the pre-trained policy's reward
        and leaves room for RL to improve it. ``noise=0`` gives only correct
        answers; ``noise=1`` only random ones.
        """
        check_noise(noise)
        return self._demonstrations(as_key(rng), n, noise)

    @functools.partial(jax.jit, static_argnums=(0, 2))
    def _demonstrations(self, key: Array, n: int, noise: float | Array) -> Demonstrations:
        # One uniform block for everything: each RNG call is a sizable program
        # to compile, and compile time dominates at these sizes.
        k = self.num_digits
        uniforms = jax.random.uniform(key, (n, 2 * k + 2))
        prompts, targets = self._prompts_from_uniforms(uniforms[:, 0])
        correct = self._answers_from_uniforms(targets, uniforms[:, 1 : k + 1])
        random = uniform_ints(uniforms[:, k + 1 : 2 * k + 1], 0, 9)
        is_noise = uniforms[:, -1] < noise
        answers = jnp.where(is_noise[:, None], random, correct)
        return assemble_demonstrations(prompts, answers, targets, is_noise, self.tokenizer)
