"""Adapters are checked against their family's module tree (meta device), and their sites are
derived from one component map."""

from __future__ import annotations

import dataclasses

import pytest
import transformers as tf

import mechscope as ms
from mechscope.models.adapters.base import Proj
from mechscope.models.adapters.llama import LLAMA


@pytest.mark.parametrize("adapter", sorted(set(ms.adapters.ADAPTERS.values()), key=lambda a: a.model_types[0]),
                         ids=lambda a: a.model_types[0])
def test_every_builtin_adapter_matches_its_family(adapter):
    ms.adapters.verify_adapter(adapter)


def test_a_wrong_path_is_named_before_it_serves():
    broken = dataclasses.replace(LLAMA, model_types=("llama",),
                                 components=dataclasses.replace(LLAMA.components, o=Proj("self_attn.out_proj"),
                                                                ln2="post_attn_norm"))
    with pytest.raises(ms.UnsupportedArchitectureError) as error:
        ms.adapters.register_adapter(broken)
    message = str(error.value)
    assert "o: no module 'model.layers.0.self_attn.out_proj'" in message
    assert "ln2: no module 'model.layers.0.post_attn_norm'" in message
    assert "site attn.out" in message and "site resid_mid" in message  # derived from the same paths
    assert ms.adapters.ADAPTERS["llama"] is LLAMA  # not registered
    not_a_projection = dataclasses.replace(LLAMA, components=dataclasses.replace(LLAMA.components, q=Proj("self_attn")))
    with pytest.raises(ms.UnsupportedArchitectureError, match="q: 'self_attn' has no 2-D weight"):
        ms.adapters.verify_adapter(not_a_projection)


def test_unknown_model_types_need_an_example():
    custom = dataclasses.replace(LLAMA, model_types=("my_llama",))
    with pytest.raises(ms.UnsupportedArchitectureError, match="pass example="):
        ms.adapters.register_adapter(custom)
    config = tf.LlamaConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=50)
    ms.adapters.register_adapter(custom, example=config)
    try:
        assert ms.adapters.get_adapter("my_llama") is custom
    finally:
        del ms.adapters.ADAPTERS["my_llama"]


def test_sites_follow_the_components():
    sites = LLAMA.block_sites
    c = LLAMA.components
    assert sites["attn.out"].path == c.o.path and sites["mlp.post"].path == c.mlp_out.path
    assert sites["mlp.pre"].path == c.mlp_gate.path and sites["ln1.out"].path == c.ln1
    assert sites["resid_mid"].kind == "input_inplace" and sites["resid_mid"].path == c.ln2
    gemma = ms.adapters.get_adapter("gemma2")
    assert gemma.block_sites["attn.out"].path == gemma.components.post_attn_norm == gemma.attn_out_norm
    assert gemma.block_sites["mlp.out"].path == gemma.components.post_mlp_norm
    olmo = ms.adapters.get_adapter("olmo2")
    assert "ln1.out" not in olmo.block_sites and olmo.block_sites["resid_mid"].path == "mlp"
    assert "resid_mid" not in ms.adapters.get_adapter("gptj").block_sites  # parallel blocks
    phi3 = ms.adapters.get_adapter("phi3").block_sites["mlp.pre"]
    assert phi3.path == "mlp.gate_up_proj" and phi3.chunk == (0, 2)
    assert ms.adapters.get_adapter("gpt2").global_sites["pos_embed"].path == "transformer.wpe"
