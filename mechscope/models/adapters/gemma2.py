"""Gemma 2: the Llama tree plus sandwich norms, (1 + w) RMSNorm, attention and final-logit softcapping."""

from __future__ import annotations

import dataclasses

from .base import NormSpec
from .llama import LLAMA, LLAMA_COMPONENTS

GEMMA2 = dataclasses.replace(
    LLAMA,
    model_types=("gemma2",),
    components=dataclasses.replace(LLAMA_COMPONENTS, ln2="pre_feedforward_layernorm",
                                   post_attn_norm="post_attention_layernorm",
                                   post_mlp_norm="post_feedforward_layernorm"),
    norm=NormSpec("rms", weight_offset=1.0),
    final_softcap_attr="final_logit_softcapping",
    docs="Gemma 2: embed is scaled by sqrt(d_model) inside the embedding module; attn.out and mlp.out "
    "are taken after the sandwich post-norms; attn.head_out splits attn.out with the post-norm's scale frozen.",
)
