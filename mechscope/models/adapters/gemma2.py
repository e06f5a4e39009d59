"""Gemma 2: sandwich norms, (1 + w) RMSNorm, attention and final-logit softcapping."""

from __future__ import annotations

from .base import Adapter, NormSpec, Proj, WeightLayout, input_of, output, residual_input_of

GEMMA2 = Adapter(
    model_types=("gemma2",),
    layers="model.layers",
    attention="self_attn",
    global_sites={
        "embed": output("model.embed_tokens"),  # the embedding module applies the sqrt(d_model) scale
        "ln_final.out": output("model.norm"),
    },
    block_sites={
        "resid_pre": input_of(""),
        "ln1.out": output("input_layernorm"),
        "attn.out": output("post_attention_layernorm"),
        "resid_mid": residual_input_of("pre_feedforward_layernorm"),
        "ln2.out": output("pre_feedforward_layernorm"),
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
        ln1="input_layernorm",
        ln2="pre_feedforward_layernorm",
        embed="model.embed_tokens",
        unembed="lm_head",
        ln_final="model.norm",
    ),
    norm=NormSpec("rms", weight_offset=1.0),
    positional="rotary",
    gated_mlp=True,
    attn_out_norm="post_attention_layernorm",
    final_softcap_attr="final_logit_softcapping",
    docs="Gemma 2: attn.out and mlp.out are taken after the sandwich post-norms; "
    "attn.head_out splits attn.out with the post-norm's scale frozen.",
)
