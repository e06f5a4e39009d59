"""Token checks shared by the core and the tasks: what a text tokenizes to, on its own."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import SelectionError


def token_ids(tokenizer, text: str) -> list[int]:
    """The ids of ``text`` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def single_token(tokenizer, text: str) -> int | None:
    """The id of ``text`` if it is exactly one token, else None."""
    ids = token_ids(tokenizer, text)
    return ids[0] if len(ids) == 1 else None


def require_single_token(tokenizer, text: str, what: str = "text") -> int:
    """The id of ``text``, or a `SelectionError` naming ``what`` it is when it is not one token."""
    ids = token_ids(tokenizer, text)
    if len(ids) != 1:
        raise SelectionError(f"{what} {text!r} is {len(ids)} tokens ({ids}), not one")
    return ids[0]


def single_token_words(tokenizer, words: Iterable[str], prefix: str = " ") -> list[str]:
    """The words that are one token each when written after ``prefix`` (a space: mid-sentence)."""
    return [w for w in words if single_token(tokenizer, prefix + w) is not None]
