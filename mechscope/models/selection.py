"""Selecting heads and positions of an activation, and writing a selection back.

A selection becomes one tuple of broadcastable index tensors, so reading (``x[idx]``) and
writing (``x.index_put(idx, value)``) touch exactly the same cells, differentiably.

Positions: an int (that axis is dropped), a slice, a sequence of ints shared by every
prompt, or ``PerPrompt(t)`` with ``t`` a LongTensor ``[batch]`` (one position per prompt,
e.g. each prompt's last real token under padding; the axis is dropped) or ``[batch, n]``.
Heads: an int (axis dropped) or a sequence of ints. Negative values count from the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import SelectionError


@dataclass(frozen=True)
class PerPrompt:
    """Positions given separately for each prompt: LongTensor ``[batch]`` or ``[batch, n]``."""

    positions: torch.Tensor

    def __init__(self, positions: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor):
        object.__setattr__(self, "positions", torch.as_tensor(positions, dtype=torch.long))


Positions = int | slice | Sequence[int] | torch.Tensor | PerPrompt | None
Heads = int | Sequence[int] | None


def _checked(values: torch.Tensor, size: int, what: str) -> torch.Tensor:
    if values.numel() and (int(values.max()) >= size or int(values.min()) < -size):
        raise SelectionError(f"{what} {values.tolist()} out of range for an axis of size {size}")
    return values % size


def _shared_index(sel: int | slice | Sequence[int] | torch.Tensor, size: int, what: str) -> torch.Tensor:
    if isinstance(sel, slice):
        return torch.arange(size)[sel]
    values = torch.as_tensor(sel, dtype=torch.long)
    if values.ndim > 1:
        raise SelectionError(
            f"{what} must be an int or a flat sequence of ints, got shape {tuple(values.shape)}; "
            "use PerPrompt(...) for positions that differ between prompts"
        )
    return _checked(values, size, what)


def index_for(
    shape: torch.Size,
    pos_dim: int,
    head_dim: int | None,
    heads: Heads,
    positions: Positions,
    device: torch.device,
) -> tuple[torch.Tensor, ...] | None:
    """Index tuple selecting ``heads`` and ``positions`` of a tensor of ``shape``.

    Returns None when nothing is selected (the whole tensor). The selected part's axes
    keep the tensor's order, minus the axes selected by a single int.
    """
    if heads is None and positions is None:
        return None
    if heads is not None and head_dim is None:
        raise SelectionError("a head selection was given for an activation without a head axis")
    batch = shape[0]
    kept: list[int] = []  # tensor dims that remain axes of the selected part
    parts: list[tuple[torch.Tensor, tuple[int, ...]]] = []  # (index, dims whose axes it spans)
    for dim, size in enumerate(shape):
        if dim == pos_dim and isinstance(positions, PerPrompt):
            idx = positions.positions
            if idx.ndim not in (1, 2) or idx.shape[0] != batch:
                raise SelectionError(
                    f"PerPrompt positions of shape {tuple(idx.shape)} do not fit a batch of {batch} "
                    "prompts; give one position (or one row of positions) per prompt"
                )
            idx = _checked(idx, size, "positions")
            if idx.ndim == 2:
                kept.append(dim)
            parts.append((idx, (0,) if idx.ndim == 1 else (0, dim)))
            continue
        selection = positions if dim == pos_dim else heads if dim == head_dim else None
        if selection is None:
            kept.append(dim)
            parts.append((torch.arange(size), (dim,)))
        elif isinstance(selection, int) or (isinstance(selection, torch.Tensor) and selection.ndim == 0):
            what = "position" if dim == pos_dim else "head"
            parts.append((_checked(torch.tensor(int(selection)), size, what), ()))
        else:
            kept.append(dim)
            parts.append((_shared_index(selection, size, "positions" if dim == pos_dim else "heads"), (dim,)))
    axis_of = {dim: i for i, dim in enumerate(kept)}
    index = []
    for idx, dims in parts:
        view = [1] * len(kept)
        for dim, n in zip(dims, idx.shape):
            view[axis_of[dim]] = n
        index.append(idx.reshape(view).to(device))
    return tuple(index)
