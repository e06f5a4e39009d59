"""``mechscope.load``: a HookedModel from a name, a directory, a GGUF file or a built model."""

from __future__ import annotations

import difflib
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..errors import ModelArgumentError, ModelNotFoundError
from .adapters import get_adapter
from .bundled import BUNDLED, cached_dir, safetensors_problem
from .hardware import describe, dtype_name, native_bf16
from .hooked import HookedModel

_log = logging.getLogger("mechscope")


def load(
    model: str | os.PathLike | PreTrainedModel,
    tokenizer=None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str | None = None,
    prepend_bos: bool | None = None,
    requires_grad: bool = False,
    local_files_only: bool = False,
    **from_pretrained_kwargs,
) -> HookedModel:
    """Load a causal LM and wrap it.

    model: ``"smollm2-135m"`` (bundled, offline), a Hugging Face hub id, a local model
      directory, a ``.gguf`` file, or an already-built ``PreTrainedModel``.
    tokenizer: for a built model (loaded automatically otherwise).
    dtype, device, device_map: as in ``from_pretrained`` (``device_map`` shards a model too
      large for one device through accelerate). The default float32 keeps activations exact;
      ``dtype=mechscope.models.hardware.default_dtype(device)`` picks bfloat16 where the hardware
      computes in it natively (AVX-512 BF16 / AMX CPUs, most CUDA GPUs), else float32. The dtype
      and hardware are logged (logger ``mechscope``, level INFO); bfloat16 on a CPU without
      native bf16 warns, since it is emulated there and slower than float32.
    prepend_bos: default for ``to_tokens``; None means what the tokenizer does itself.
    requires_grad: keep parameter gradients on (off by default: interpretability needs
      gradients with respect to activations, which work either way).
    local_files_only: never contact the hub (as ``HF_HUB_OFFLINE=1``).
    attn_implementation: transformers' attention kernel; default "sdpa" where the family has
      it, else "eager" (GPT-J before transformers 5.24). Hooks work with either.
    """
    if isinstance(model, PreTrainedModel):
        hf_model = model
        if device is not None:
            hf_model = hf_model.to(device)
    else:
        source, extra = _resolve(model)
        if local_files_only:
            extra["local_files_only"] = True
        get_adapter(_model_type(source, model, extra))  # unsupported architectures fail before loading weights
        kwargs = dict(dtype=dtype, device_map=device_map, **extra, **from_pretrained_kwargs)
        hf_model = _weights(source, model, attn_implementation, kwargs)
        if tokenizer is None:
            tokenizer = _tokenizer(source, model, extra)
        if device is not None and device_map is None:
            hf_model = hf_model.to(device)
    if not requires_grad:
        hf_model.requires_grad_(False)
    _report_dtype(model, hf_model)
    return HookedModel(hf_model, tokenizer, default_prepend_bos=prepend_bos)


def _report_dtype(requested, hf_model: PreTrainedModel) -> None:
    """Log the dtype and hardware the model runs with; warn when bf16 is emulated (slow) there."""
    name = requested if isinstance(requested, (str, os.PathLike)) else type(requested).__name__
    where = hf_model.device
    _log.info("mechscope.load(%r): %s on %s; %s", str(name), dtype_name(hf_model.dtype), where, describe(where))
    if hf_model.dtype == torch.bfloat16 and not native_bf16(where):
        warnings.warn(
            f"{str(name)!r} is loaded in bfloat16 on {where}, which has no native bf16 ({describe(where)}): "
            f"bf16 is emulated there and typically several times slower than float32. Pass "
            f"dtype=mechscope.models.hardware.default_dtype() to use the fast dtype of this machine.",
            stacklevel=3,
        )


def _weights(source: str, requested, attn_implementation: str | None, kwargs: dict) -> PreTrainedModel:
    """The model, with SDPA attention unless asked otherwise or the family lacks it."""
    if attn_implementation is None:
        config = _from_pretrained(AutoConfig, source, requested, **{k: v for k, v in kwargs.items() if k in _CONFIG_KW})
        family = AutoModelForCausalLM._model_mapping.get(type(config), None)
        attn_implementation = "sdpa" if getattr(family, "_supports_sdpa", True) else "eager"
    return _from_pretrained(AutoModelForCausalLM, source, requested, attn_implementation=attn_implementation, **kwargs)


_CONFIG_KW = ("gguf_file", "local_files_only", "revision", "trust_remote_code", "token", "cache_dir")


def _tokenizer(source: str, requested, extra: dict):
    """The tokenizer; None for a local model directory that has none (e.g. a toy model)."""
    path = Path(source)
    if path.is_dir() and "gguf_file" not in extra and not any(
        (path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    ):
        return None
    return _from_pretrained(AutoTokenizer, source, requested, **extra)


def _resolve(model: str | os.PathLike) -> tuple[str, dict]:
    """(source for from_pretrained, extra kwargs). Local paths are checked here, so their
    errors name the path and what is wrong with it rather than a hub download."""
    if not isinstance(model, (str, os.PathLike)):
        raise ModelArgumentError(
            f"mechscope.load expects a bundled model name, a hub id, a local directory or .gguf path, or a "
            f"PreTrainedModel; got {type(model).__name__} {model!r}"
        )
    name = os.fspath(model)
    if not name.strip():
        raise ModelNotFoundError("mechscope.load was given an empty model name")
    if name in BUNDLED:
        return str(cached_dir(name)), {}
    path = Path(name).expanduser()
    if path.is_file() or name.endswith(".gguf"):
        return _gguf_file(path)
    if path.is_dir():
        _check_model_dir(path)
        return str(path), {}
    if name.startswith((".", "/", "~")) or os.sep in name and path.parent.is_dir() and not _looks_like_hub_id(name):
        raise ModelNotFoundError(f"model directory {name!r} does not exist")
    return name, {}


def _gguf_file(path: Path) -> tuple[str, dict]:
    """A file given to load must be a GGUF file (checked by its magic bytes)."""
    if not path.exists():
        raise ModelNotFoundError(f"GGUF file {str(path)!r} does not exist")
    if not path.is_file():
        raise ModelNotFoundError(f"{str(path)!r} is not a file; a GGUF model is a single .gguf file")
    with path.open("rb") as file:
        magic = file.read(4)
    if magic != b"GGUF":
        raise ModelNotFoundError(
            f"{str(path)!r} is a file but not a GGUF model (it starts with {magic!r}, not b'GGUF'). "
            f"mechscope.load takes a .gguf file or a model directory (config.json + weights)."
        )
    return str(path.parent), {"gguf_file": path.name}


def _check_model_dir(path: Path) -> None:
    """A local model directory needs a config.json that parses, and safetensors files whose
    headers match their sizes (other weight formats are checked by transformers)."""
    config = path / "config.json"
    if not config.is_file():
        raise ModelNotFoundError(
            f"{str(path)!r} is not a model directory: it has no config.json "
            f"(holds {_listing(path)}). Point load at the folder with config.json and the weights."
        )
    try:
        json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelNotFoundError(f"{str(config)!r} is not valid JSON ({error}); the model directory is corrupt") from None
    for weights in sorted(path.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            raise ModelNotFoundError(f"{str(weights)!r} {problem}; the model directory is corrupt")


def _listing(path: Path, limit: int = 5) -> str:
    names = sorted(child.name for child in path.iterdir())
    if not names:
        return "nothing"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith(("/", "."))


def _model_type(source: str, requested, extra: dict) -> str:
    return _from_pretrained(AutoConfig, source, requested, **extra).model_type


def _from_pretrained(cls, source: str, requested, **kwargs):
    """``cls.from_pretrained`` with errors that state the real cause first: for a local
    directory or file what transformers found wrong, for a hub id why it is not available."""
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        cause = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        if Path(source).exists():
            raise ModelNotFoundError(f"could not load the local model {str(requested)!r}: {cause}") from error
        raise ModelNotFoundError(_hub_message(str(requested), cause, kwargs)) from error


def _hub_message(requested: str, cause: str, kwargs: dict) -> str:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        why = " (HF_HUB_OFFLINE=1 is set)"
    elif kwargs.get("local_files_only"):
        why = " (local_files_only=True)"
    else:
        why = " and the hub could not be reached"
    close = difflib.get_close_matches(requested, list(BUNDLED), n=2, cutoff=0.5) or [
        bundled for bundled in BUNDLED if bundled.startswith(requested)]
    bundled = (f" Did you mean the bundled {' or '.join(map(repr, close))}?" if close
               else f" Bundled models (offline): {', '.join(BUNDLED)}.")
    return (
        f"could not load {requested!r}: it is not a bundled model, a local directory or file, and it is not in "
        f"the Hugging Face cache{why}.{bundled} "
        f"For a hub model, download it on a machine with internet access (huggingface-cli download {requested}) "
        f"or pass a local directory. Underlying error: {cause}"
    )
