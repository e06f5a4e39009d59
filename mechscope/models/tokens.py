"""Token checks shared by the core and the tasks (what a text tokenizes to, on its own) and
the one way tokens are shown to a reader (decoded text, whitespace made visible)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import torch

from ..errors import SelectionError, TokenIdError


def check_token_ids(ids: torch.Tensor, size: int, vocabulary: str) -> None:
    """Raise `TokenIdError` naming the ids of ``ids`` (any shape) outside ``[0, size)``;
    ``vocabulary`` says which vocabulary ``size`` is (the model's, the tokenizer's)."""
    if not ids.numel():
        return
    bad = (ids < 0) | (ids >= size)
    if bool(bad.any()):
        values = torch.unique(ids[bad]).tolist()
        shown = ", ".join(map(str, values[:8])) + (f" and {len(values) - 8} more" if len(values) > 8 else "")
        raise TokenIdError(f"token id(s) {shown} outside {vocabulary} of {size} ids (valid: 0 .. {size - 1})")


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


# How whitespace and control characters look in token labels (dashboards, figure axes,
# DataFrames): one visible glyph each, so " Mary" and "Mary" or "\n" and " " differ on screen.
_VISIBLE = {" ": "\u00b7", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}


def visible(text: str) -> str:
    """``text`` with spaces as ``·``, newlines ``↵``, tabs ``⇥``, CR ``␍`` and any other
    non-printing character as ``\\xNN``/``\\uNNNN``."""
    out = []
    for ch in text:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif not ch.isprintable():
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte-to-character table (GPT-2, Llama 3, SmolLM ...)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token decoded on its own: ``[" Mary", " and", ...]``.

    A token that is only part of a UTF-8 character (byte-level BPE splits ``’`` into pieces)
    decodes to U+FFFD; such tokens are shown as their bytes, ``\\xe2\\x80``, instead of
    ``"\ufffd"`` or the raw byte-level piece (``âĢ``).
    """
    ids = [int(i) for i in ids]
    texts = tokenizer.batch_decode([[i] for i in ids])
    if not any("\ufffd" in t for t in texts):
        return texts
    pieces = tokenizer.convert_ids_to_tokens(ids)
    table = _byte_decoder()
    for i, (text, piece) in enumerate(zip(texts, pieces)):
        if "\ufffd" not in text or not isinstance(piece, str):
            continue
        if all(ch in table for ch in piece):
            raw = bytes(table[ch] for ch in piece)
        elif piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece byte fallback
            raw = bytes([int(piece[3:-1], 16)])
        else:
            continue
        texts[i] = raw.decode("utf-8", errors="backslashreplace")
    return texts


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """`token_texts` made `visible`: labels for dashboards, axes and tables."""
    return [visible(t) for t in token_texts(tokenizer, ids)]
