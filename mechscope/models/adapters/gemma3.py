"""Gemma 3 (text): the Gemma 2 tables; q/k norms run before the attention function."""

from __future__ import annotations

import dataclasses

from .gemma2 import GEMMA2

GEMMA3 = dataclasses.replace(
    GEMMA2,
    model_types=("gemma3_text",),
    components=dataclasses.replace(GEMMA2.components, q_norm="self_attn.q_norm", k_norm="self_attn.k_norm"),
    docs="Gemma 3 text models (Gemma3ForCausalLM); attn.q/k are after the per-head q/k norms and rotary.",
)
