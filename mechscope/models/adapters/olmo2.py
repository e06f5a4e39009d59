"""OLMo 2: no pre-norms; RMS post-norms on the attention and MLP outputs; full-width q/k norms."""

from __future__ import annotations

from .base import Adapter, NormSpec, Proj, WeightLayout, input_of, output, residual_input_of

OLMO2 = Adapter(
    model_types=("olmo2",),
    layers="model.layers",
    attention="self_attn",
    global_sites={
        "embed": output("model.embed_tokens"),
        "ln_final.out": output("model.norm"),
    },
    block_sites={
        "resid_pre": input_of(""),
        "attn.out": output("post_attention_layernorm"),
        "resid_mid": residual_input_of("mlp"),
        "mlp.pre": output("mlp.gate_proj"),
        "mlp.post": input_of("mlp.down_proj"),
        "mlp.out": output("post_feedforward_layernorm"),
        "resid_post": output(""),
    },
    weights=WeightLayout(
        q=Proj("self_attn.q_proj"),
        k=Proj("self_attn.k_proj"),
        v=Proj("self_attn.v_proj"),
        o=Proj("self_attn.o_proj"),
        mlp_gate=Proj("mlp.gate_proj"),
        mlp_in=Proj("mlp.up_proj"),
        mlp_out=Proj("mlp.down_proj"),
        embed="model.embed_tokens",
        unembed="lm_head",
        ln_final="model.norm",
    ),
    norm=NormSpec("rms"),
    positional="rotary",
    gated_mlp=True,
    attn_out_norm="post_attention_layernorm",
    docs="OLMo 2: there is no ln1/ln2 (attention and MLP read the raw residual).",
)
