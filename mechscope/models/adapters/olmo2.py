"""OLMo 2: the Llama tree without pre-norms; RMS post-norms on the attention and MLP outputs."""

from __future__ import annotations

import dataclasses

from .base import output, residual_input_of
from .llama import LLAMA, LLAMA_BLOCK_SITES, LLAMA_WEIGHTS

OLMO2 = dataclasses.replace(
    LLAMA,
    model_types=("olmo2",),
    block_sites={
        **{k: v for k, v in LLAMA_BLOCK_SITES.items() if k not in ("ln1.out", "ln2.out")},
        "attn.out": output("post_attention_layernorm"),
        "resid_mid": residual_input_of("mlp"),
        "mlp.out": output("post_feedforward_layernorm"),
    },
    weights=dataclasses.replace(LLAMA_WEIGHTS, ln1=None, ln2=None),
    attn_out_norm="post_attention_layernorm",
    docs="OLMo 2: no ln1/ln2 (attention and MLP read the raw residual); full-width q/k norms precede attn.q/k.",
)
