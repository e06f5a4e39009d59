"""Qwen3: the Llama module tree under another model_type."""

from __future__ import annotations

import dataclasses

from .llama import LLAMA

QWEN3 = dataclasses.replace(LLAMA, model_types=("qwen3",), docs="Qwen3 (per-head RMS norms on q and k run before the attention function, so attn.q/k are normed and rotated).")
