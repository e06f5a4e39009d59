"""Mistral: the Llama module tree under another model_type."""

from __future__ import annotations

import dataclasses

from .llama import LLAMA

MISTRAL = dataclasses.replace(LLAMA, model_types=("mistral",), docs="Mistral (sliding-window attention comes through the mask).")
