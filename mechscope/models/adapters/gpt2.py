"""GPT-2: Conv1D weights stored [in, out], fused c_attn, learned positions, LayerNorm."""

from __future__ import annotations

from .base import Adapter, FusedQKV, NormSpec, Proj, WeightLayout, input_of, output, residual_input_of

GPT2 = Adapter(
    model_types=("gpt2",),
    layers="transformer.h",
    attention="attn",
    global_sites={
        "embed": output("transformer.wte"),
        "pos_embed": output("transformer.wpe"),
        "ln_final.out": output("transformer.ln_f"),
    },
    block_sites={
        "resid_pre": input_of(""),
        "ln1.out": output("ln_1"),
        "attn.out": output("attn.c_proj"),
        "resid_mid": residual_input_of("ln_2"),
        "ln2.out": output("ln_2"),
        "mlp.pre": output("mlp.c_fc"),
        "mlp.post": input_of("mlp.c_proj"),
        "mlp.out": output("mlp"),
        "resid_post": output(""),
    },
    weights=WeightLayout(
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
