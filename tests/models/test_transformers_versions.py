"""Adapters follow the installed transformers: the attention entry each family's class really
provides, and what its blocks really return (run by `make test` and `make test-newest`)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers as tf
from packaging.version import Version
from torch import nn

import mechscope as ms
from mechscope.errors import UnsupportedArchitectureError
from mechscope.models.adapters.gptj import GPTJ
from mechscope.models.adapters.llama import LLAMA
from mechscope.models.attention import attention_entry_of

TRANSFORMERS = Version(tf.__version__).release


def _attention(model: ms.HookedModel, layer: int = 0) -> nn.Module:
    return model.hf.get_submodule(f"{model.adapter.layers}.{layer}.{model.adapter.attention}")


def test_every_family_routes_through_a_declared_entry(tiny):
    module = _attention(tiny.model)
    entry = attention_entry_of(tiny.model.adapter, module)
    assert entry in tiny.model.adapter.attention_entries
    if entry == "interface":
        assert "_mechscope_route" in vars(module)
    else:
        assert tiny.model.adapter.attention_method in vars(module)  # the per-instance wrapper


def test_declared_block_output_is_what_blocks_return(tiny):
    """`block_output` (used by partial forwards' pass-through blocks) matches the installed release."""
    seen = []
    block = tiny.model.hf.get_submodule(tiny.model.adapter.layers)[0]
    handle = block.register_forward_hook(lambda module, args, out: seen.append(type(out)))
    try:
        with torch.no_grad():
            tiny.model(tiny.tokens)
    finally:
        handle.remove()
    assert seen and (seen[0] is tuple) == (tiny.model.adapter.block_output == "tuple")


def test_gptj_uses_the_interface_from_5_24():
    """transformers 5.24 moved GPT-J onto ALL_ATTENTION_FUNCTIONS; earlier 5.x wraps `_attn`."""
    from transformers.models.gptj.modeling_gptj import GPTJAttention

    config = tf.GPTJConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16, rotary_dim=8)
    model = ms.HookedModel(tf.GPTJForCausalLM(config).eval())
    module = _attention(model)
    if TRANSFORMERS >= (5, 24):
        assert attention_entry_of(model.adapter, module) == "interface"
        assert model.adapter.block_output == "tensor"
    else:
        assert hasattr(GPTJAttention, "_attn")
        assert attention_entry_of(model.adapter, module) == "method"
        assert model.adapter.block_output == "tuple"


class _PlainAttention(nn.Module):
    """An attention module calling neither transformers' interface nor a known method."""

    def forward(self, hidden_states):
        return hidden_states


class _OwnMethodAttention(_PlainAttention):
    def _attn(self, query, key, value, attention_mask=None):
        raise AssertionError("not called here")


def test_entry_detection_order_and_clear_error():
    both = dataclasses.replace(GPTJ, attention_entry=("interface", "method"))
    assert attention_entry_of(both, _OwnMethodAttention()) == "method"
    llama_module = tf.LlamaForCausalLM(
        tf.LlamaConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                       intermediate_size=48, vocab_size=50)
    ).model.layers[0].self_attn
    assert attention_entry_of(LLAMA, llama_module) == "interface"
    with pytest.raises(UnsupportedArchitectureError, match="ALL_ATTENTION_FUNCTIONS"):
        attention_entry_of(LLAMA, _PlainAttention())
    with pytest.raises(UnsupportedArchitectureError, match="'_attn' method"):
        attention_entry_of(dataclasses.replace(GPTJ, attention_entry="method"), _PlainAttention())


@pytest.mark.parametrize("family", ["gptj", "llama"])
def test_a_saved_directory_loads_with_the_kernel_its_family_has(tmp_path, family):
    """Before 5.24 GPT-J has no SDPA: loading a directory falls back to eager instead of failing."""
    from tests.conftest import FAMILIES

    config_cls, model_cls, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    hf = model_cls(config_cls(**kwargs)).eval()
    hf.save_pretrained(tmp_path)
    model = ms.load(tmp_path)
    expected = ("sdpa", "mechscope_fused") if model_cls._supports_sdpa else ("eager", "mechscope_eager")
    assert model.hf.config._attn_implementation in expected
    tokens = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(tokens), hf(input_ids=tokens, use_cache=False).logits)
