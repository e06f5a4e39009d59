"""GPT-J: parallel block with one shared LayerNorm.

transformers 5.24 moved GPT-J onto the shared layout: attention through
``ALL_ATTENTION_FUNCTIONS`` (with an fp32-upcasting eager function) and blocks returning a
tensor. Earlier 5.x releases call the module's own ``_attn`` (also fp32) and return a tuple.
The adapter declares both; the router detects which attention entry the installed class has.
"""

from __future__ import annotations

from .base import Adapter, Components, NormSpec, Proj, since_transformers

GPTJ = Adapter(
    model_types=("gptj",),
    layers="transformer.h",
    components=Components(
        attn="attn",
        q=Proj("attn.q_proj"),
        k=Proj("attn.k_proj"),
        v=Proj("attn.v_proj"),
        o=Proj("attn.out_proj"),
        mlp_in=Proj("mlp.fc_in"),
        mlp_out=Proj("mlp.fc_out"),
        ln1="ln_1",
        embed="transformer.wte",
        unembed="lm_head",
        ln_final="transformer.ln_f",
    ),
    norm=NormSpec("layer"),
    positional="rotary",
    gated_mlp=False,
    parallel=True,
    attention_entry=("interface", "method"),  # >= 5.24: AttentionInterface; before: GPTJAttention._attn
    attention_method="_attn",
    attention_scale_attr="scale_attn",
    attention_upcast=True,
    block_output=since_transformers("5.24", new="tensor", old="tuple"),
    docs="GPT-J (attention and MLP both read ln1.out; there is no ln2).",
)
