"""GPT-2: Conv1D weights stored [in, out], fused c_attn, learned positions, LayerNorm."""

from __future__ import annotations

from .base import Adapter, Components, FusedQKV, NormSpec, Proj

GPT2 = Adapter(
    model_types=("gpt2",),
    layers="transformer.h",
    components=Components(
        attn="attn",
        qkv=FusedQKV("attn.c_attn", "concat", conv1d=True),
        o=Proj("attn.c_proj", conv1d=True),
        mlp_in=Proj("mlp.c_fc", conv1d=True),
        mlp_out=Proj("mlp.c_proj", conv1d=True),
        ln1="ln_1",
        ln2="ln_2",
        embed="transformer.wte",
        pos_embed="transformer.wpe",
        unembed="lm_head",
        ln_final="transformer.ln_f",
    ),
    norm=NormSpec("layer"),
    positional="learned",
    gated_mlp=False,
    docs="GPT-2 (all sizes).",
)
