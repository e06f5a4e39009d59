"""Phi-3: the Llama tree with fused qkv_proj [Q | K | V] and fused gate_up_proj [gate | up]."""

from __future__ import annotations

import dataclasses

from .base import FusedQKV, Proj
from .llama import LLAMA, LLAMA_COMPONENTS

PHI3 = dataclasses.replace(
    LLAMA,
    model_types=("phi3",),
    components=dataclasses.replace(
        LLAMA_COMPONENTS,
        q=None,
        k=None,
        v=None,
        qkv=FusedQKV("self_attn.qkv_proj", "concat"),
        mlp_gate=None,
        mlp_in=None,
        mlp_gate_up=Proj("mlp.gate_up_proj"),
    ),
    docs="Phi-3 (mlp.pre is the gate half of the fused gate_up projection).",
)
