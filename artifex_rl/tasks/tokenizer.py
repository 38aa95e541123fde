"""The character tokenizer shared by the digit tasks.

Sixteen ids, one character each, so a token array prints as a short string and
``decode(encode(s)) == s`` for every string over the alphabet:

====  ======  =========================================
id    char    meaning
====  ======  =========================================
0     ``_``   PAD: fills prompts/completions (also after EOS)
1     ``^``   BOS: first prompt token (position 0 is never scored)
2     ``$``   EOS: ends a completion
3     ``|``   SEP: ends a prompt
4-13  ``0-9`` the digits; ``id = digit + 4``
14    ``+``
15    ``=``
====  ======  =========================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_ALPHABET = "_^$|0123456789+="


@dataclasses.dataclass(frozen=True)
class DigitTokenizer:
    """Digits plus a few specials; see the module docstring for the id table."""

    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    sep_id: int = 3
    digit_offset: int = 4
    plus_id: int = 14
    equals_id: int = 15
    vocab_size: int = len(_ALPHABET)

    def encode(self, text: str) -> list[int]:
        """Characters to ids, e.g. ``"^12|" -> [1, 5, 6, 3]``."""
        try:
            return [_ALPHABET.index(ch) for ch in text]
        except ValueError:
            bad = sorted({ch for ch in text if ch not in _ALPHABET})
            raise ValueError(f"text {text!r} has characters {bad} outside {_ALPHABET!r}") from None

    def decode(self, ids: Iterable[int] | Array | np.ndarray, *, stop_at_eos: bool = False) -> str:
        """Ids ``(T,)`` to characters; ``stop_at_eos`` keeps the text up to and including EOS."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} outside [0, {self.vocab_size})")
            out.append(_ALPHABET[i])
            if stop_at_eos and i == self.eos_id:
                break
        return "".join(out)

    def decode_batch(self, ids: Array | np.ndarray, *, stop_at_eos: bool = False) -> list[str]:
        """``(B, T)`` ids to ``B`` strings."""
        return [self.decode(row, stop_at_eos=stop_at_eos) for row in np.asarray(ids)]

    def digits_to_ids(self, digits: Array) -> Array:
        """Digit values 0-9 (any shape) to token ids."""
        return jnp.asarray(digits, jnp.int32) + self.digit_offset

    def ids_to_digits(self, ids: Array) -> tuple[Array, Array]:
        """Token ids to ``(digit values, is_digit)``; non-digit ids give value 0."""
        ids = jnp.asarray(ids, jnp.int32)
        is_digit = (ids >= self.digit_offset) & (ids < self.digit_offset + 10)
        return jnp.where(is_digit, ids - self.digit_offset, 0), is_digit
