"""Gemma 2: the Llama tree plus sandwich norms, (1 + w) RMSNorm, attention and final-logit softcapping."""

from __future__ import annotations

import dataclasses

from .base import NormSpec, output, residual_input_of
from .llama import LLAMA, LLAMA_BLOCK_SITES, LLAMA_WEIGHTS

GEMMA2 = dataclasses.replace(
    LLAMA,
    model_types=("gemma2",),
    block_sites={
        **LLAMA_BLOCK_SITES,
        "attn.out": output("post_attention_layernorm"),
        "resid_mid": residual_input_of("pre_feedforward_layernorm"),
        "ln2.out": output("pre_feedforward_layernorm"),
        "mlp.out": output("post_feedforward_layernorm"),
    },
    weights=dataclasses.replace(LLAMA_WEIGHTS, ln2="pre_feedforward_layernorm"),
    norm=NormSpec("rms", weight_offset=1.0),
    attn_out_norm="post_attention_layernorm",
    final_softcap_attr="final_logit_softcapping",
    docs="Gemma 2: embed is scaled by sqrt(d_model) inside the embedding module; attn.out and mlp.out "
    "are taken after the sandwich post-norms; attn.head_out splits attn.out with the post-norm's scale frozen.",
)
