"""Corpus helpers: wikitext stripping and token windows."""

from __future__ import annotations

import torch

from mechscope.data.corpora import python_stdlib, strip_wikitext, token_windows


def test_strip_wikitext():
    raw = ("{{Infobox|name={{nested|x}}}}'''Anarchism''' is a [[political philosophy]] and [[movement|a movement]]"
           "<ref>Some source</ref>.\n== History ==\n* Early [http://example.org forms]\n"
           "{| class=\"wikitable\"\n| a || b\n|}\n[[Category:Politics]]")
    assert strip_wikitext(raw) == "Anarchism is a political philosophy and a movement.\nHistory\nEarly forms"


class _CharTokenizer:
    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_token_windows_are_deterministic_slices():
    texts = ["abcdefghij", "klmnopqrst"]
    windows = token_windows(_CharTokenizer(), texts, 5, 6, seed=3)
    assert windows.shape == (6, 5)
    assert torch.equal(windows, token_windows(_CharTokenizer(), texts, 5, 6, seed=3))
    stream = [ord(c) for c in "abcdefghij"] + [0] + [ord(c) for c in "klmnopqrst"] + [0]
    for row in windows.tolist():
        assert any(stream[s : s + 5] == row for s in range(len(stream) - 4))


def test_python_stdlib_has_sources():
    texts = python_stdlib(max_files=20)
    assert len(texts) >= 15 and any("def " in t for t in texts)
