"""GPT-NeoX / Pythia: per-head interleaved fused qkv, partial rotary, parallel residual by config."""

from __future__ import annotations

from .base import Adapter, FusedQKV, NormSpec, Proj, WeightLayout, input_of, output, residual_input_of

GPT_NEOX = Adapter(
    model_types=("gpt_neox",),
    layers="gpt_neox.layers",
    attention="attention",
    global_sites={
        "embed": output("gpt_neox.embed_in"),
        "ln_final.out": output("gpt_neox.final_layer_norm"),
    },
    block_sites={
        "resid_pre": input_of(""),
        "ln1.out": output("input_layernorm"),
        "attn.out": output("attention.dense"),
        "resid_mid": residual_input_of("post_attention_layernorm"),  # sequential blocks only
        "ln2.out": output("post_attention_layernorm"),
        "mlp.pre": output("mlp.dense_h_to_4h"),
        "mlp.post": input_of("mlp.dense_4h_to_h"),
        "mlp.out": output("mlp"),
        "resid_post": output(""),
    },
    weights=WeightLayout(
        qkv=FusedQKV("attention.query_key_value", "per_head"),
        o=Proj("attention.dense"),
        mlp_in=Proj("mlp.dense_h_to_4h"),
        mlp_out=Proj("mlp.dense_4h_to_h"),
        ln1="input_layernorm",
        ln2="post_attention_layernorm",
        embed="gpt_neox.embed_in",
        unembed="lm_head",
        ln_final="gpt_neox.final_layer_norm",
    ),
    norm=NormSpec("layer"),
    positional="rotary",
    gated_mlp=False,
    parallel="use_parallel_residual",
    docs="GPT-NeoX and Pythia (parallel or sequential residual, read from the config).",
)
