"""Phi-3: the Llama tree with fused qkv_proj [Q | K | V] and fused gate_up_proj [gate | up]."""

from __future__ import annotations

import dataclasses

from .base import FusedQKV, Proj, output
from .llama import LLAMA, LLAMA_BLOCK_SITES, LLAMA_WEIGHTS

PHI3 = dataclasses.replace(
    LLAMA,
    model_types=("phi3",),
    block_sites={**LLAMA_BLOCK_SITES, "mlp.pre": output("mlp.gate_up_proj", chunk=(0, 2))},
    weights=dataclasses.replace(
        LLAMA_WEIGHTS,
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
