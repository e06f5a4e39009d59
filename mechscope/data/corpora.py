"""Real text that works offline: fetched from package registries, cleaned, cached.

- ``wikipedia``: the English Wikipedia dump shipped in the ``gensim==4.4.0`` wheel's test
  data, wikitext markup stripped, redirects and stubs dropped: 106 articles, 2.9M
  characters, 651k SmolLM2 tokens.
- ``python_stdlib``: the Python standard library's own source files.
Each is cached as JSON lines under ``$MECHSCOPE_CACHE/corpora``. For online users any list
of strings (e.g. a Hugging Face dataset column) works wherever a corpus is expected.
"""

from __future__ import annotations

import bz2
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import torch

from ..errors import MechscopeError
from ..paths import cache_path

_GENSIM = "gensim==4.4.0"
_WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


class CorpusUnavailableError(MechscopeError):
    """A corpus could not be fetched or found."""


def _cached(name: str) -> Path:
    return cache_path("corpora", f"{name}.jsonl")


def _write_jsonl(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        handle.writelines(json.dumps(text) + "\n" for text in texts)
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[str]:
    with open(path) as handle:
        return [json.loads(line) for line in handle]


_MARKUP = [
    (re.compile(r"<!--.*?-->", re.DOTALL), ""),
    (re.compile(r"<ref[^>]*/>"), ""),
    (re.compile(r"<ref.*?</ref>", re.DOTALL), ""),
    (re.compile(r"\{\|.*?\|\}", re.DOTALL), ""),  # tables
    (re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.IGNORECASE), ""),
    (re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]"), r"\1"),  # [[target|text]] -> text
    (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"\[https?://\S+\]"), ""),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.MULTILINE), r"\1"),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"^[*#:;]+\s*", re.MULTILINE), ""),
    (re.compile(r"&nbsp;"), " "),
    (re.compile(r"[ \t]+"), " "),
    (re.compile(r"\n{3,}"), "\n\n"),
]


def strip_wikitext(text: str) -> str:
    """Plain text from MediaWiki markup (templates, refs, tables, links, emphasis, headings)."""
    previous = None
    while previous != text:  # templates nest: remove innermost first until none is left
        previous = text
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
    for pattern, replacement in _MARKUP:
        text = pattern.sub(replacement, text)
    return text.strip()


def _fetch_wheel(spec: str, into: Path) -> Path:
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(into)],
                            check=False, capture_output=True, text=True)
    wheels = list(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise CorpusUnavailableError(
            f"could not download {spec} from the package index to get its bundled corpus "
            f"(pip said: {result.stderr.strip()[-300:]}); check the index is reachable or pass your own texts"
        )
    return wheels[0]


def wikipedia() -> list[str]:
    """106 English Wikipedia articles (plain text), fetched once from the gensim wheel."""
    path = _cached("wikipedia")
    if path.is_file():
        return _read_jsonl(path)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _fetch_wheel(_GENSIM, Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            raw = bz2.decompress(archive.read(_WIKI_MEMBER))
    texts = []
    for element in ET.fromstring(raw).iter():
        if element.tag.endswith("}text") and element.text and not element.text.lstrip().upper().startswith("#REDIRECT"):
            clean = strip_wikitext(element.text)
            if len(clean) > 200:
                texts.append(clean)
    _write_jsonl(path, texts)
    return texts


def python_stdlib(max_files: int | None = None) -> list[str]:
    """Source files of the running Python's standard library (sorted by path)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    if not files:
        raise CorpusUnavailableError(f"no Python sources under {root}")
    texts = []
    for file in files[:max_files]:
        try:
            texts.append(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def token_windows(tokenizer, texts: list[str], seq_len: int, n_windows: int, *, seed: int = 0) -> torch.Tensor:
    """``n_windows`` random windows of ``seq_len`` tokens from the texts: LongTensor `[n, seq_len]`.

    Texts are tokenized and joined with the EOS token; windows start at random offsets
    (deterministic given ``seed``).
    """
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + separator
    if len(stream) < seq_len + 1:
        raise CorpusUnavailableError(f"the texts hold {len(stream)} tokens, fewer than one window of {seq_len}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (n_windows,), generator=generator)
    data = torch.tensor(stream, dtype=torch.long)
    return torch.stack([data[s : s + seq_len] for s in starts.tolist()])


def packed_windows(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """Every token of the texts once: the texts tokenized, joined with the EOS token and cut
    into consecutive windows of ``seq_len`` (the incomplete tail dropped): LongTensor `[n, seq_len]`."""
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + separator
    n_windows = len(stream) // seq_len
    if n_windows == 0:
        raise CorpusUnavailableError(f"the texts hold {len(stream)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(stream[: n_windows * seq_len], dtype=torch.long).reshape(n_windows, seq_len)


def hf_texts(dataset: str, *, split: str = "train", column: str = "text", config: str | None = None,
             max_chars: int | None = None) -> list[str]:
    """Texts streamed from a Hugging Face dataset (needs the ``datasets`` package and the hub,
    or a local dataset folder the ``datasets`` loaders read), stopping once ``max_chars``
    characters are read."""
    try:
        import datasets
    except ImportError as e:
        raise CorpusUnavailableError("reading a Hugging Face dataset needs `pip install datasets`") from e
    try:
        stream = datasets.load_dataset(dataset, config, split=split, streaming=True)
    except Exception as e:  # the hub, the network and the loaders raise many kinds
        raise CorpusUnavailableError(f"cannot stream the dataset {dataset!r} (split {split!r}): {e}") from e
    texts, n_chars = [], 0
    for row in stream:
        if column not in row:
            raise CorpusUnavailableError(f"dataset {dataset!r} has no column {column!r} (columns: {sorted(row)})")
        texts.append(row[column])
        n_chars += len(row[column])
        if max_chars is not None and n_chars >= max_chars:
            break
    return texts


BUILT_IN = {"wikipedia": wikipedia, "python_stdlib": python_stdlib}


def corpus_texts(name: str, *, max_chars: int | None = None) -> list[str]:
    """The texts of a corpus named ``"wikipedia"``, ``"python_stdlib"``, ``"hf:<dataset>"``
    (optionally ``"hf:<dataset>:<split>:<column>"``; streamed, stopping after ``max_chars``
    characters) or a path to a ``.txt``/``.jsonl`` file (one JSON string or ``{"text": ...}``
    per line)."""
    if name in BUILT_IN:
        return BUILT_IN[name]()
    if name.startswith("hf:"):
        dataset, *rest = name[3:].split(":")
        options = dict(zip(("split", "column"), rest))
        return hf_texts(dataset, **options, max_chars=max_chars)
    path = Path(name)
    if path.is_file():
        if path.suffix == ".jsonl":
            rows = _read_jsonl(path)
            return [row["text"] if isinstance(row, dict) else row for row in rows]
        return [path.read_text(encoding="utf-8")]
    raise CorpusUnavailableError(f"unknown corpus {name!r}: use {', '.join(BUILT_IN)}, 'hf:<dataset>' or a file path")


def mixed_windows(tokenizer, names: list[str], seq_len: int, *, seed: int = 0,
                  max_chars: int | None = None) -> torch.Tensor:
    """`packed_windows` of every named corpus, shuffled together (seeded) so that any stretch of
    windows mixes the corpora: LongTensor `[n, seq_len]`. ``max_chars`` bounds what is read from
    each streamed (``hf:``) corpus."""
    windows = torch.cat([packed_windows(tokenizer, corpus_texts(name, max_chars=max_chars), seq_len) for name in names])
    return windows[torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))]
