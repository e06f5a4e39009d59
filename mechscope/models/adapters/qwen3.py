"""Qwen3: the Llama module tree under another model_type."""

from __future__ import annotations

import dataclasses

from .llama import LLAMA, LLAMA_COMPONENTS

QWEN3 = dataclasses.replace(LLAMA, model_types=("qwen3",),
                           components=dataclasses.replace(LLAMA_COMPONENTS, q_norm="self_attn.q_norm",
                                                          k_norm="self_attn.k_norm"),
                           docs="Qwen3 (per-head RMS norms on q and k run before the attention function, so attn.q/k are normed and rotated).")
