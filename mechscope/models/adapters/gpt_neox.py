"""GPT-NeoX / Pythia: per-head interleaved fused qkv, partial rotary, parallel residual by config."""

from __future__ import annotations

from .base import Adapter, Components, FusedQKV, NormSpec, Proj

GPT_NEOX = Adapter(
    model_types=("gpt_neox",),
    layers="gpt_neox.layers",
    components=Components(
        attn="attention",
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
