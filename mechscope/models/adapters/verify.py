"""Checking an adapter against the model family it describes, before any weights load.

`verify_adapter` builds the family's model on the meta device (no memory, no download: the
config class comes from transformers' registry, or is given) and checks that every module
path the adapter states exists and is what it should be: the blocks a ModuleList, each
projection a module with a 2-D weight, each norm and site module present.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import UnsupportedArchitectureError
from .base import Adapter


def _example_model(adapter: Adapter, example) -> nn.Module:
    import transformers

    if isinstance(example, nn.Module):
        return example
    model_type = adapter.model_types[0]
    try:
        config = example if example is not None else transformers.AutoConfig.for_model(model_type, num_hidden_layers=2)
    except ValueError as err:
        raise UnsupportedArchitectureError(
            f"transformers does not know model_type {model_type!r}, so the adapter cannot be checked on an "
            "example model: pass example= (a config or a model of the family)") from err
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def verify_adapter(adapter: Adapter, example=None) -> None:
    """Raise `UnsupportedArchitectureError` naming every path of ``adapter`` that the family's
    model does not have. example: a ``PretrainedConfig`` or model of the family (default: the
    registered config of ``adapter.model_types[0]`` with 2 layers, built on the meta device)."""
    model = _example_model(adapter, example)
    problems: list[str] = []

    def find(path: str, what: str) -> nn.Module | None:
        try:
            return model.get_submodule(path) if path else model
        except AttributeError:
            problems.append(f"{what}: no module {path!r}")
            return None

    blocks = find(adapter.layers, "layers")
    if blocks is not None and not isinstance(blocks, nn.ModuleList):
        problems.append(f"layers: {adapter.layers!r} is a {type(blocks).__name__}, not a ModuleList of blocks")
    block = f"{adapter.layers}.0"
    c = adapter.components
    projections = {"q": c.q, "k": c.k, "v": c.v, "qkv": c.qkv, "o": c.o, "mlp_in": c.mlp_in, "mlp_gate": c.mlp_gate,
                   "mlp_gate_up": c.mlp_gate_up, "mlp_out": c.mlp_out}
    for role, proj in projections.items():
        if proj is None:
            continue
        module = find(f"{block}.{proj.path}", role)
        weight = getattr(module, "weight", None) if module is not None else None
        if module is not None and (not isinstance(weight, torch.Tensor) or weight.ndim != 2):
            problems.append(f"{role}: {proj.path!r} has no 2-D weight")
    for role in ("attn", "mlp", "ln1", "ln2", "post_attn_norm", "post_mlp_norm", "q_norm", "k_norm"):
        path = getattr(c, role)
        if path is not None:
            find(f"{block}.{path}" if path else block, role)
    for role in ("embed", "pos_embed", "unembed", "ln_final"):
        path = getattr(c, role)
        if path is not None:
            find(path, role)
    for name, site in adapter.block_sites.items():
        find(f"{block}.{site.path}" if site.path else block, f"site {name}")
    for name, site in adapter.global_sites.items():
        find(site.path, f"site {name}")
    if problems:
        raise UnsupportedArchitectureError(
            f"adapter for {', '.join(adapter.model_types)} does not match {type(model).__name__}: " + "; ".join(problems))
