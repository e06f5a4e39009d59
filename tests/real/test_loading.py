"""Every way into mechscope.load gives the same model."""

from __future__ import annotations

import torch

import mechscope as ms
from mechscope.models.bundled import cached_dir, gguf_path

PROMPT = "The capital of France is"


def test_local_directory_and_device_map_match_the_bundled_load(smol):
    directory = cached_dir("smollm2-135m")
    assert (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file()
    expected = smol(PROMPT)
    for model in (ms.load(str(directory)), ms.load(directory, device_map={"": "cpu"})):
        assert torch.equal(model(PROMPT), expected)


def test_gguf_path_loads_the_same_weights(smol):
    model = ms.load(gguf_path("smollm2-135m"))
    assert torch.equal(model(PROMPT), smol(PROMPT))


def test_built_model_and_dtype(smol):
    wrapped = ms.load(smol.hf, smol.tokenizer)
    assert wrapped.hf is smol.hf
    half = ms.load("smollm2-135m", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    logits, cache = half.run_with_cache(PROMPT, "blocks.*.attn.pattern")
    assert logits[0, -1].argmax().item() == smol.to_single_token(" Paris")
    assert cache["blocks.5.attn.pattern"].dtype == torch.bfloat16

