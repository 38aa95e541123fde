"""SortDigits: repeat the prompt's digits in ascending order.

Prompt (``P = num_digits + 2``): ``BOS d_1 ... d_k SEP`` with ``k = num_digits``
uniform random digits. The correct completion is the same digits sorted, then
EOS: ``^3141|`` -> ``1134$``.

Reward (``(B,)`` in ``[0, 1]``): ``accuracy`` is the fraction of the ``k``
target positions whose body token (text before the first EOS) is the right
digit; a body shorter than ``k`` scores 0 on the missing positions and extra
tokens are not scored. Length rule: a well-formed completion (exactly ``k``
digits, then EOS) earns ``accuracy``, any other ``accuracy / 2``. Composed as
``0.5 * strict + 0.5 * lenient`` of two :class:`SortedPositionAccuracy` terms.
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
    pad_columns,
    uniform_ints,
    well_formed,
)
from artifex_rl.tasks.tokenizer import DigitTokenizer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SortedPositionAccuracy(CompletionReward):
    """Fraction of the ``k`` positions matching ``conditions`` (sorted digit values ``(B, k)``).

    ``strict=True`` scores 0 unless the completion is exactly ``k`` digits then EOS.
    """

    strict: bool = False

    def score(self, parsed: ParsedCompletion, conditions: Array) -> Array:
        if conditions.ndim != 2:
            raise ValueError(
                "SortedPositionAccuracy: conditions must be sorted digits (B, k), "
                f"got shape {conditions.shape}"
            )
        k = conditions.shape[1]
        # A completion shorter than k still gets a score: missing columns are PAD.
        tokens = pad_columns(parsed.tokens, k, self.tokenizer.pad_id)[:, :k]
        in_body = pad_columns(parsed.in_body, k, False)[:, :k]
        correct = (tokens == self.tokenizer.digits_to_ids(conditions)) & in_body
        accuracy = jnp.mean(correct, axis=1)
        if self.strict:
            accuracy = jnp.where(well_formed(parsed, self.tokenizer, k), accuracy, 0.0)
        return accuracy


@dataclasses.dataclass(frozen=True)
class SortDigitsTask:
    """Prompts, reward and demonstrations of the SortDigits task (see module docstring).

    Attributes:
      num_digits: ``k``, digits per prompt (default 5).
      tokenizer: the shared :class:`DigitTokenizer`.
    """

    num_digits: int = 5
    tokenizer: DigitTokenizer = DigitTokenizer()

    def __post_init__(self) -> None:
        if self.num_digits < 1:
            raise ValueError(f"num_digits must be >= 1, got {self.num_digits}")

    @property
    def prompt_length(self) -> int:
        """``P = k + 2``: BOS, the digits, SEP."""
        return self.num_digits + 2

    @property
    def answer_length(self) -> int:
        """Tokens of a correct completion, EOS included: the ``max_new_tokens`` to sample."""
        return self.num_digits + 1

    def encode_prompts(self, digits: Array) -> Array:
        """Digit values ``(n, k)`` -> prompts ``(n, k + 2)`` int32."""
        digits = jnp.asarray(digits, jnp.int32)
        if digits.ndim != 2 or digits.shape[1] != self.num_digits:
            raise ValueError(f"digits must be (n, {self.num_digits}), got shape {digits.shape}")
        n = digits.shape[0]
        tok = self.tokenizer
        return jnp.concatenate(
            [
                jnp.full((n, 1), tok.bos_id, jnp.int32),
                tok.digits_to_ids(digits),
                jnp.full((n, 1), tok.sep_id, jnp.int32),
            ],
            axis=1,
        )

    def sample_prompts(self, rng: Any, n: int) -> tuple[Array, Array]:
        """``n`` prompts ``(n, k + 2)`` int32 and their sorted digits ``(n, k)`` int32.

        ``rng``: a JAX key (then jittable with ``n`` static), an int seed or a
        ``numpy.random.Generator``.
        """
        return self._sample_prompts(as_key(rng), n)

    @functools.partial(jax.jit, static_argnums=(0, 2))
    def _sample_prompts(self, key: Array, n: int) -> tuple[Array, Array]:
        return self._prompts_from_uniforms(jax.random.uniform(key, (n, self.num_digits)))

    def _prompts_from_uniforms(self, uniforms: Array) -> tuple[Array, Array]:
        digits = uniform_ints(uniforms, 0, 9)
        return self.encode_prompts(digits), jnp.sort(digits, axis=1)

    @functools.cached_property
    def reward_fn(self) -> CompositeReward:
        """The task reward: ``0.5 * strict + 0.5 * lenient`` accuracy (module docstring)."""
        strict = SortedPositionAccuracy(self.tokenizer, strict=True)
        lenient = SortedPositionAccuracy(self.tokenizer, strict=False)
        return CompositeReward([strict, lenient], weights=[0.5, 0.5])

    def demonstrations(self, rng: Any, n: int, *, noise: float = 0.0) -> Demonstrations:
        """``n`` teacher-forcing rows; a ``noise`` fraction answer with random digits.

        Noise rows stay well-formed (``k`` uniform digits, then EOS): the
        pre-trained policy learns the format but only partly the sorting, so
        its reward starts below 1 and RL has room to improve it.
        """
        check_noise(noise)
        return self._demonstrations(as_key(rng), n, noise)

    @functools.partial(jax.jit, static_argnums=(0, 2))
    def _demonstrations(self, key: Array, n: int, noise: float | Array) -> Demonstrations:
        # One uniform block for everything: each RNG call is a sizable program
        # to compile, and compile time dominates at these sizes.
        k = self.num_digits
        uniforms = jax.random.uniform(key, (n, 2 * k + 1))
        prompts, target = self._prompts_from_uniforms(uniforms[:, :k])
        random = uniform_ints(uniforms[:, k : 2 * k], 0, 9)
        is_noise = uniforms[:, -1] < noise
        answers = jnp.where(is_noise[:, None], random, target)
        return assemble_demonstrations(prompts, answers, target, is_noise, self.tokenizer)
