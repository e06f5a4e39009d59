"""Atomic training checkpoints in safetensors: tensors (model and optimizer state) plus JSON metadata.

Written to a temporary file and renamed, so a run killed mid-write leaves the previous
checkpoint intact. Optimizer states are flattened to named tensors, so loading never
unpickles anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict,
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write ``tensors`` (and the optimizer's state) with ``meta`` to ``path`` atomically."""
    path = Path(path)
    payload = {k: v.detach().contiguous() for k, v in tensors.items()}
    meta = dict(meta)
    if optimizer is not None:
        optim_tensors, meta["_optimizer"] = _flatten_optimizer(optimizer)
        payload.update(optim_tensors)
    tmp = path.with_name(path.name + ".tmp")
    save_file(payload, str(tmp), metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)


def checkpoint_meta(path: str | os.PathLike) -> dict:
    """The JSON metadata of the checkpoint at ``path``, without reading its tensors."""
    with safe_open(str(path), "pt") as handle:
        meta = json.loads(handle.metadata()["meta"])
    meta.pop("_optimizer", None)
    return meta


def load_checkpoint(path: str | os.PathLike, optimizer: torch.optim.Optimizer | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, meta)`` from ``path``; restores ``optimizer`` in place when given."""
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as handle:
        meta = json.loads(handle.metadata()["meta"])
    if optimizer is not None:
        _restore_optimizer(optimizer, tensors, meta.pop("_optimizer"))
    return {k: v for k, v in tensors.items() if not k.startswith("optim.")}, meta


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                meta["scalars"][f"{index}.{key}"] = value
    return tensors, meta


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
