"""Architecture adapters: one declarative table per family, looked up by ``model_type``."""

from __future__ import annotations

from ...errors import UnsupportedArchitectureError
from .base import Adapter
from .gemma2 import GEMMA2
from .gemma3 import GEMMA3
from .gpt2 import GPT2
from .gpt_neox import GPT_NEOX
from .gptj import GPTJ
from .llama import LLAMA
from .mistral import MISTRAL
from .olmo2 import OLMO2
from .phi3 import PHI3
from .qwen2 import QWEN2
from .qwen3 import QWEN3
from .verify import verify_adapter

ALL_ADAPTERS: tuple[Adapter, ...] = (GPT2, GPT_NEOX, GPTJ, LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA2, GEMMA3, OLMO2, PHI3)
ADAPTERS: dict[str, Adapter] = {t: a for a in ALL_ADAPTERS for t in a.model_types}


def register_adapter(adapter: Adapter, *, example=None, verify: bool = True) -> None:
    """Make ``adapter`` serve its ``model_types`` (replacing any existing entry), after checking
    every module path it states on the family's model built on the meta device
    (`verify_adapter`; example: a config or model of the family when transformers does not
    know the model_type; verify=False skips the check)."""
    if verify:
        verify_adapter(adapter, example)
    for model_type in adapter.model_types:
        ADAPTERS[model_type] = adapter


def get_adapter(model_type: str) -> Adapter:
    """The adapter for a Hugging Face ``model_type``; a clear error for unsupported ones."""
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"mechscope has no adapter for model_type {model_type!r}. Supported: "
            f"{', '.join(sorted(ADAPTERS))}. Adding one is a small declarative table: "
            "see docs/adapters.md."
        ) from None
