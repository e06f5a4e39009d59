"""Llama 2/3 and SmolLM2. Its tables are shared by Mistral, Qwen2 and Qwen3."""

from __future__ import annotations

from .base import Adapter, NormSpec, Proj, WeightLayout, input_of, output, residual_input_of

LLAMA_BLOCK_SITES = {
    "resid_pre": input_of(""),
    "ln1.out": output("input_layernorm"),
    "attn.out": output("self_attn.o_proj"),
    "resid_mid": residual_input_of("post_attention_layernorm"),
    "ln2.out": output("post_attention_layernorm"),
    "mlp.pre": output("mlp.gate_proj"),
    "mlp.post": input_of("mlp.down_proj"),
    "mlp.out": output("mlp"),
    "resid_post": output(""),
}

LLAMA_WEIGHTS = WeightLayout(
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

LLAMA_GLOBAL_SITES = {
    "embed": output("model.embed_tokens"),
    "ln_final.out": output("model.norm"),
}

LLAMA = Adapter(
    model_types=("llama",),
    layers="model.layers",
    attention="self_attn",
    global_sites=LLAMA_GLOBAL_SITES,
    block_sites=LLAMA_BLOCK_SITES,
    weights=LLAMA_WEIGHTS,
    norm=NormSpec("rms"),
    positional="rotary",
    gated_mlp=True,
    docs="Llama 2/3 and SmolLM2.",
)
