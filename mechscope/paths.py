"""Where mechscope keeps what it downloads, converts or trains once: ``$MECHSCOPE_CACHE``
(default ``~/.cache/mechscope``), with one folder per kind (``models``, ``corpora``, ``toys``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$MECHSCOPE_CACHE``, default ``~/.cache/mechscope``; read at every call, so tests and
    users can point it elsewhere at any time."""
    return Path(os.environ.get("MECHSCOPE_CACHE") or Path.home() / ".cache" / "mechscope")


def cache_path(*parts: str) -> Path:
    """``cache_root() / parts[0] / parts[1] / ...`` (not created)."""
    return cache_root().joinpath(*parts)
