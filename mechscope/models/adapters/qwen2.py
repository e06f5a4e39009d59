"""Qwen2: the Llama module tree under another model_type."""

from __future__ import annotations

import dataclasses

from .llama import LLAMA

QWEN2 = dataclasses.replace(LLAMA, model_types=("qwen2",), docs="Qwen2 (q/k/v projections carry biases; the weight views pick them up).")
