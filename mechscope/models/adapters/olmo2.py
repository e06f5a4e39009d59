"""OLMo 2: the Llama tree without pre-norms; RMS post-norms on the attention and MLP outputs."""

from __future__ import annotations

import dataclasses

from .llama import LLAMA, LLAMA_COMPONENTS

OLMO2 = dataclasses.replace(
    LLAMA,
    model_types=("olmo2",),
    components=dataclasses.replace(LLAMA_COMPONENTS, ln1=None, ln2=None, post_attn_norm="post_attention_layernorm",
                                   post_mlp_norm="post_feedforward_layernorm",
                                   q_norm="self_attn.q_norm", k_norm="self_attn.k_norm"),
    docs="OLMo 2: no ln1/ln2 (attention and MLP read the raw residual); full-width q/k norms precede attn.q/k.",
)
