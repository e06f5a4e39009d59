"""Where mechscope keeps what it downloads, converts or trains once: ``$MECHSCOPE_CACHE``
(default ``~/.cache/mechscope``), with one folder per kind (``models``, ``corpora``, ``toys``)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CacheLocationError


def cache_root() -> Path:
    """``$MECHSCOPE_CACHE``, default ``~/.cache/mechscope``; read at every call, so tests and
    users can point it elsewhere at any time."""
    return Path(os.environ.get("MECHSCOPE_CACHE") or Path.home() / ".cache" / "mechscope").expanduser()


def cache_path(*parts: str) -> Path:
    """``cache_root() / parts[0] / parts[1] / ...`` (not created). Raises ``CacheLocationError``
    at once when the root or a folder on the way is an existing file, so nothing is computed
    that could not be stored."""
    root = cache_root()
    path = root.joinpath(*parts)
    for folder in [*reversed(root.parents), root, *(root.joinpath(*parts[:i]) for i in range(1, len(parts)))]:
        if folder.exists() and not folder.is_dir():
            source = "$MECHSCOPE_CACHE" if os.environ.get("MECHSCOPE_CACHE") else "the default cache"
            raise CacheLocationError(
                f"cannot use the mechscope cache at {str(root)!r} ({source}): {str(folder)!r} is a file, not a "
                f"directory. Point $MECHSCOPE_CACHE at a directory (it is created if missing) or remove the file."
            )
    return path
