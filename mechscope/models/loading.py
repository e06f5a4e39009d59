"""``mechscope.load``: a HookedModel from a name, a directory, a GGUF file or a built model."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..errors import ModelNotFoundError
from .adapters import get_adapter
from .bundled import BUNDLED, cached_dir
from .hooked import HookedModel


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
      large for one device through accelerate).
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
        get_adapter(_model_type(source, extra))  # unsupported architectures fail before loading weights
        kwargs = dict(dtype=dtype, device_map=device_map, **extra, **from_pretrained_kwargs)
        hf_model = _weights(source, model, attn_implementation, kwargs)
        if tokenizer is None:
            tokenizer = _tokenizer(source, model, extra)
        if device is not None and device_map is None:
            hf_model = hf_model.to(device)
    if not requires_grad:
        hf_model.requires_grad_(False)
    return HookedModel(hf_model, tokenizer, default_prepend_bos=prepend_bos)


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
    """(source for from_pretrained, extra kwargs)."""
    name = str(model)
    if name in BUNDLED:
        return str(cached_dir(name)), {}
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {name!r} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        return str(path), {}
    if name.startswith((".", "/", "~")) or os.sep in name and path.parent.is_dir() and not _looks_like_hub_id(name):
        raise ModelNotFoundError(f"model directory {name!r} does not exist")
    return name, {}


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith(("/", "."))


def _model_type(source: str, extra: dict) -> str:
    return _from_pretrained(AutoConfig, source, source, **extra).model_type


def _from_pretrained(cls, source: str, requested, **kwargs):
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            why = " (HF_HUB_OFFLINE=1 is set)"
        elif kwargs.get("local_files_only"):
            why = " (local_files_only=True)"
        else:
            why = " and the hub could not be reached"
        raise ModelNotFoundError(
            f"could not load {requested!r}: it is not a local directory or file, and it is not in the "
            f"Hugging Face cache{why}. "
            f"Download it on a machine with internet access (huggingface-cli download {requested}) or pass a "
            f"local directory. Underlying error: {str(error).splitlines()[0][:300]}"
        ) from error
