"""Phi-3: fused qkv_proj [Q | K | V] and fused gate_up_proj [gate | up]."""

from __future__ import annotations

from .base import Adapter, FusedQKV, NormSpec, Proj, WeightLayout, input_of, output, residual_input_of

PHI3 = Adapter(
    model_types=("phi3",),
    layers="model.layers",
    attention="self_attn",
    global_sites={
        "embed": output("model.embed_tokens"),
        "ln_final.out": output("model.norm"),
    },
    block_sites={
        "resid_pre": input_of(""),
        "ln1.out": output("input_layernorm"),
        "attn.out": output("self_attn.o_proj"),
        "resid_mid": residual_input_of("post_attention_layernorm"),
        "ln2.out": output("post_attention_layernorm"),
        "mlp.pre": output("mlp.gate_up_proj", chunk=(0, 2)),
        "mlp.post": input_of("mlp.down_proj"),
        "mlp.out": output("mlp"),
        "resid_post": output(""),
    },
    weights=WeightLayout(
        qkv=FusedQKV("self_attn.qkv_proj", "concat"),
        o=Proj("self_attn.o_proj"),
        mlp_gate_up=Proj("mlp.gate_up_proj"),
        mlp_out=Proj("mlp.down_proj"),
        ln1="input_layernorm",
        ln2="post_attention_layernorm",
        embed="model.embed_tokens",
        unembed="lm_head",
        ln_final="model.norm",
    ),
    norm=NormSpec("rms"),
    positional="rotary",
    gated_mlp=True,
    docs="Phi-3 (mlp.pre is the gate half of the fused gate_up projection).",
)
