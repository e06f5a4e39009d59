"""Llama 2/3 and SmolLM2. Its tables are shared by Mistral, Qwen2 and Qwen3."""

from __future__ import annotations

from .base import Adapter, Components, NormSpec, Proj

LLAMA_COMPONENTS = Components(
    attn="self_attn",
    q=Proj("self_attn.q_proj"),
    k=Proj("self_attn.k_proj"),
    v=Proj("self_attn.v_proj"),
    o=Proj("self_attn.o_proj"),
    mlp_gate=Proj("mlp.gate_proj"),
    mlp_in=Proj("mlp.up_proj"),
    mlp_out=Proj("mlp.down_proj"),
    ln1="input_layernorm",
    ln2="post_attention_layernorm",
    embed="model.embed_tokens",
    unembed="lm_head",
    ln_final="model.norm",
)

LLAMA = Adapter(
    model_types=("llama",),
    layers="model.layers",
    components=LLAMA_COMPONENTS,
    norm=NormSpec("rms"),
    positional="rotary",
    gated_mlp=True,
    docs="Llama 2/3 and SmolLM2.",
)
