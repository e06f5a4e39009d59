"""Selecting heads and positions of an activation, and writing a selection back.

A selection becomes one tuple of broadcastable index tensors, so reading (``x[idx]``) and
writing (``x.index_put(idx, value)``) touch exactly the same cells, differentiably.

Positions: an int (that axis is dropped), a slice, a sequence of ints shared by every
prompt, a boolean mask ``[pos]`` (the True positions, shared), ``PerPrompt(t)`` with ``t`` a
LongTensor ``[batch]`` (one position per prompt; the axis is dropped) or ``[batch, n]``, a
boolean mask ``[batch, pos]`` (the same as ``PerPrompt`` of each row's True positions; every
row needs the same count), or ``"last"``: each prompt's last real token under the running
forward's attention mask (padding on either side skipped; the axis is dropped).
Heads: an int (axis dropped), a sequence of ints or a boolean mask ``[n_heads]``. Negative
values count from the end. Bools, floats and float tensors are rejected: ``positions=True``
or ``heads=2.7`` is a bug in the caller, never silently an index.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import SelectionError

LAST = "last"


@dataclass(frozen=True)
class PerPrompt:
    """Positions given separately for each prompt: LongTensor ``[batch]`` or ``[batch, n]``,
    or a BoolTensor mask ``[batch, pos]`` with the same number of True positions per row."""

    positions: torch.Tensor

    def __init__(self, positions: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor):
        values = as_index_tensor(positions, "PerPrompt positions")
        if values.dtype == torch.bool and values.ndim != 2:
            raise SelectionError(f"a PerPrompt mask must be [batch, pos] booleans, got shape {tuple(values.shape)}")
        object.__setattr__(self, "positions", values)


Positions = int | slice | Sequence[int] | torch.Tensor | PerPrompt | Literal["last"] | None
Heads = int | Sequence[int] | torch.Tensor | None


def _element_kinds(values: object) -> set[str]:
    """The kinds ("bool", "int", or a type name) of the leaves of a nested sequence."""
    if isinstance(values, bool):
        return {"bool"}
    if isinstance(values, numbers.Integral):
        return {"int"}
    if isinstance(values, Sequence) and not isinstance(values, str):
        return set().union(*(_element_kinds(v) for v in values)) if len(values) else set()
    return {type(values).__name__}


def as_index_tensor(values: object, what: str) -> torch.Tensor:
    """``values`` (ints, a nested sequence of ints or of bools, an integer or bool tensor or
    array) as a LongTensor, or a BoolTensor for a mask. Floats, strings, mixed bools and ints
    raise `SelectionError`."""
    if isinstance(values, torch.Tensor):
        tensor = values
    elif isinstance(values, Sequence) and not isinstance(values, str):
        kinds = _element_kinds(values)
        if kinds - {"bool", "int"} or kinds == {"bool", "int"}:
            raise SelectionError(f"{what} must be ints or a boolean mask, got elements of type "
                                 f"{', '.join(sorted(kinds))} in {values!r}")
        try:
            tensor = torch.tensor(values, dtype=torch.bool if kinds == {"bool"} else torch.long)
        except ValueError:  # ragged: rows of different lengths
            raise SelectionError(f"{what} {values!r} has rows of different lengths; give one flat list, or "
                                 "one row of the same length per prompt") from None
    elif hasattr(values, "__array__") and not isinstance(values, (str, bytes)):
        tensor = torch.as_tensor(values)
    else:
        raise SelectionError(f"{what} must be ints or a boolean mask, got {type(values).__name__} {values!r}")
    if tensor.dtype == torch.bool:
        return tensor
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        raise SelectionError(f"{what} must be integer indices or a boolean mask, got a {tensor.dtype} tensor; "
                             "round explicitly (t.long()) if you meant indices")
    return tensor.long()


def _checked(values: torch.Tensor, size: int, what: str) -> torch.Tensor:
    if values.numel() and (int(values.max()) >= size or int(values.min()) < -size):
        raise SelectionError(f"{what} {values.tolist()} out of range for an axis of size {size}")
    return values % size if size else values


def _scalar(sel: object, what: str) -> int | None:
    """``sel`` as a Python int when it is one index; None when it is not a scalar. Bools and
    floats raise."""
    if isinstance(sel, bool):
        raise SelectionError(f"{what}={sel!r}: a bool is not an index; give an int, or a boolean mask "
                             "with one entry per position/head")
    if isinstance(sel, numbers.Integral):
        return int(sel)
    if isinstance(sel, numbers.Real):
        raise SelectionError(f"{what}={sel!r}: a float is not an index; give an int")
    if isinstance(sel, torch.Tensor) and sel.ndim == 0:
        return _scalar(as_index_tensor(sel, what).item(), what)
    return None


def _slice_index(sel: slice, size: int, what: str) -> torch.Tensor:
    for part in (sel.start, sel.stop, sel.step):
        if part is not None and (isinstance(part, bool) or not isinstance(part, numbers.Integral)):
            raise SelectionError(f"{what} slice {sel!r} must have int bounds")
    return torch.arange(size)[sel]


def _mask_index(mask: torch.Tensor, size: int, what: str) -> torch.Tensor:
    """The True indices of a 1-D mask over an axis of ``size``: LongTensor ``[n]``."""
    if mask.shape != (size,):
        raise SelectionError(f"a boolean {what} mask must have one entry per element of the axis ({size}), "
                             f"got shape {tuple(mask.shape)}")
    return mask.nonzero()[:, 0]


def _shared_index(sel: slice | Sequence[int] | torch.Tensor, size: int, what: str) -> torch.Tensor:
    """LongTensor ``[n]``: the indices a selection shared by every prompt picks on an axis of ``size``."""
    if isinstance(sel, slice):
        return _slice_index(sel, size, what)
    values = as_index_tensor(sel, what)
    if values.dtype == torch.bool and values.ndim == 1:
        return _mask_index(values, size, what)
    if values.ndim > 1 or values.dtype == torch.bool:
        raise SelectionError(
            f"{what} must be an int, a flat sequence of ints or a 1-D boolean mask, got shape "
            f"{tuple(values.shape)}; use PerPrompt(...) (or a [batch, pos] boolean mask, for positions) "
            "for positions that differ between prompts"
        )
    return _checked(values, size, what)


def _per_prompt_index(values: torch.Tensor, batch: int, size: int) -> torch.Tensor:
    """LongTensor ``[batch]`` or ``[batch, n]`` of per-prompt positions (a ``[batch, pos]``
    boolean mask becomes each row's True positions)."""
    if values.dtype == torch.bool:
        if values.shape != (batch, size):
            raise SelectionError(f"a per-prompt position mask must be [batch, pos] = [{batch}, {size}], "
                                 f"got shape {tuple(values.shape)}")
        counts = values.sum(-1)
        if values.shape[0] and bool((counts != counts[0]).any()):
            raise SelectionError(
                f"a [batch, pos] position mask must select the same number of positions in every prompt "
                f"(the selected part is a [batch, n, ...] tensor), got counts {counts.tolist()}; select "
                "each prompt's positions in its own call, or pad the selection to a common count"
            )
        return values.nonzero()[:, 1].reshape(batch, int(counts[0]) if batch else 0)
    if values.ndim not in (1, 2) or values.shape[0] != batch:
        raise SelectionError(
            f"PerPrompt positions of shape {tuple(values.shape)} do not fit a batch of {batch} "
            "prompts; give one position (or one row of positions) per prompt"
        )
    return _checked(values, size, "positions")


# The attention mask of the forward in progress (set by `HookedModel` around each forward and
# the backward of `run_with_cache`), against which positions="last" resolves.
_NO_RUN = object()
_RUN_MASK: ContextVar[object] = ContextVar("mechscope_run_attention_mask", default=_NO_RUN)


@contextmanager
def running_with_mask(attention_mask: torch.Tensor | None) -> Iterator[None]:
    """Within the block, ``positions="last"`` means each prompt's last real token under
    ``attention_mask`` ``[batch, pos]`` (None: no padding, the last position)."""
    token = _RUN_MASK.set(attention_mask)
    try:
        yield
    finally:
        _RUN_MASK.reset(token)


def _last_positions(batch: int, size: int) -> torch.Tensor:
    """LongTensor ``[batch]``: each prompt's last real token in the running forward."""
    mask = _RUN_MASK.get()
    if mask is _NO_RUN:
        raise SelectionError(
            "positions='last' means each prompt's last real token of the running forward, but no "
            "HookedModel forward is running here (a backward hook run by your own .backward()?); "
            "use ms.PerPrompt(mechscope.models.selection.last_real_positions(attention_mask, batch, pos)), or -1 "
            "for unpadded prompts"
        )
    return last_real_positions(mask, batch, size)


def _resolve(sel: object, size: int, batch: int, what: str, positional: bool) -> tuple[torch.Tensor, str]:
    """``(index, kind)`` of one axis' selection: kind "all" / "shared" (LongTensor ``[n]``),
    "scalar" (0-d, the axis is dropped) or "per_prompt" (``[batch]`` or ``[batch, n]``)."""
    if sel is None:
        return torch.arange(size), "all"
    if isinstance(sel, str):
        if positional and sel == LAST:
            return _last_positions(batch, size), "per_prompt"
        accepted = "'last', " if positional else ""
        raise SelectionError(f"{what}={sel!r} is not a selection; give {accepted}an int, a list of ints, a slice "
                             "or a boolean mask")
    if isinstance(sel, PerPrompt):
        if not positional:
            raise SelectionError("PerPrompt selects positions, not heads")
        return _per_prompt_index(sel.positions, batch, size), "per_prompt"
    scalar = _scalar(sel, what)
    if scalar is not None:
        return _checked(torch.tensor(scalar), size, what.removesuffix("s")), "scalar"
    if positional and not isinstance(sel, slice):
        values = as_index_tensor(sel, what)
        if values.dtype == torch.bool and values.ndim == 2:
            return _per_prompt_index(values, batch, size), "per_prompt"
    return _shared_index(sel, size, what), "shared"


def check_selection(heads: Heads, positions: Positions) -> None:
    """Reject a selection of the wrong kind before any tensor is seen (bools, floats, float
    tensors, strings other than "last", PerPrompt heads); sizes are checked when it is applied."""
    for sel, what, positional in ((heads, "heads", False), (positions, "positions", True)):
        if sel is None or (positional and (sel == LAST if isinstance(sel, str) else isinstance(sel, PerPrompt))):
            continue
        if isinstance(sel, (str, PerPrompt)):
            _resolve(sel, 0, 0, what, positional)  # raises the message for this kind
        elif isinstance(sel, slice):
            _slice_index(sel, 0, what)
        elif _scalar(sel, what) is None:
            values = as_index_tensor(sel, what)
            if values.ndim > (2 if positional and values.dtype == torch.bool else 1):
                _shared_index(values, 0, what)  # raises the shape message


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
    keep the tensor's order, minus the axes selected by a single int (or one position per prompt).
    """
    if heads is None and positions is None:
        return None
    if heads is not None and head_dim is None:
        raise SelectionError("a head selection was given for an activation without a head axis")
    batch = shape[0]
    kept: list[int] = []  # tensor dims that remain axes of the selected part
    parts: list[tuple[torch.Tensor, tuple[int, ...]]] = []  # (index, dims whose axes it spans)
    for dim, size in enumerate(shape):
        positional = dim == pos_dim
        selection = positions if positional else heads if dim == head_dim else None
        idx, kind = _resolve(selection, size, batch, "positions" if positional else "heads", positional)
        if kind == "scalar":
            spans: tuple[int, ...] = ()
        elif kind == "per_prompt":
            spans = (0,) if idx.ndim == 1 else (0, dim)
        else:
            spans = (dim,)
        if dim in spans:
            kept.append(dim)
        parts.append((idx, spans))
    axis_of = {dim: i for i, dim in enumerate(kept)}
    index = []
    for idx, dims in parts:
        view = [1] * len(kept)
        for dim, n in zip(dims, idx.shape):
            view[axis_of[dim]] = n
        index.append(idx.reshape(view).to(device))
    return tuple(index)


def last_real_positions(attention_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
    """LongTensor ``[batch]``: each prompt's last real token (mask 1), ``length - 1`` without a mask.

    attention_mask: ``[batch, length]`` (1 = real token, either padding side) or None.
    """
    return single_position(-1, attention_mask, batch, length)


def single_position(position: int, attention_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
    """LongTensor ``[batch]``: ``position`` in each prompt of a possibly padded batch.

    A non-negative ``position`` is an index into the (padded) sequence, the same for every
    prompt; a negative one counts real tokens from each prompt's end (-1: its last real token),
    so padding on either side is skipped. attention_mask: ``[batch, length]`` or None (no padding).
    """
    if isinstance(position, bool) or not isinstance(position, int):
        raise SelectionError(f"a single position must be an int, got {type(position).__name__} {position!r}")
    if attention_mask is None:
        attention_mask = torch.ones((batch, length), dtype=torch.long)
    real = attention_mask.bool()
    if real.shape != (batch, length):
        raise SelectionError(f"attention_mask of shape {tuple(real.shape)} does not fit tokens [{batch}, {length}]")
    if position >= 0:
        if position >= length:
            raise SelectionError(f"position {position} out of range for sequences of {length} tokens")
        return torch.full((batch,), position, dtype=torch.long, device=real.device)
    from_end = real.long().flip(-1).cumsum(-1).flip(-1)  # [batch, length]: real tokens at or after each position
    hit = real & (from_end == -position)
    if not bool(hit.any(-1).all()):
        short = int((~hit.any(-1)).nonzero()[0, 0])
        raise SelectionError(f"position {position} does not exist in prompt {short}, which has "
                             f"{int(real[short].sum())} real tokens")
    return hit.long().argmax(-1)
