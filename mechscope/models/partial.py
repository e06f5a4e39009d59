"""Partial forwards: starting at a block on a given residual stream, or stopping after a block.

Start (`starting_at`): patching and tracing experiments run many variants that all equal one
recorded run up to some layer. Instead of recomputing that prefix per variant, the blocks
before the start layer are swapped for pass-throughs for the duration of one forward, and
the start block's input is replaced by the recorded residual. The model's own forward still
builds masks and position embeddings, so every family keeps its exact computation from the
start layer on.

Stop (`stopping_after`): harvesting activations of block ``l`` needs nothing after it; the
forward is cut off where the next block (or the final norm) would start.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import SelectionError

if TYPE_CHECKING:
    from .hook_points import HookPoint
    from .hooked import HookedModel


class _PassThrough(nn.Module):
    """Stands in for a skipped block: returns its hidden states untouched, in the block's format."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return (hidden_states, None) if self.as_tuple else hidden_states


@contextmanager
def starting_at(model: HookedModel, layer: int, resid_pre: torch.Tensor) -> Iterator[None]:
    """Within the block, a forward skips blocks ``0 .. layer-1`` and feeds ``resid_pre``
    `[batch, pos, d_model]` to block ``layer`` in place of what the embeddings produced.

    Hooks on the skipped blocks do not fire; ``blocks.{layer}.resid_pre`` hooks see ``resid_pre``.
    """
    blocks = model.hf.get_submodule(model.adapter.layers)
    if not 0 <= layer < len(blocks):
        raise SelectionError(f"start layer {layer} out of range for {len(blocks)} blocks")

    def feed(module: nn.Module, args: tuple, kwargs: dict):
        x = args[0] if args else kwargs["hidden_states"]
        if x.shape != resid_pre.shape:
            raise SelectionError(
                f"residual to start from has shape {tuple(resid_pre.shape)}, but the run's hidden states "
                f"are {tuple(x.shape)}: pass tokens of the residual's batch and length")
        new = resid_pre.to(x.dtype)
        return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

    skipped = [blocks[i] for i in range(layer)]
    handle = blocks[layer].register_forward_pre_hook(feed, with_kwargs=True, prepend=True)
    try:
        for i in range(layer):
            blocks[i] = _PassThrough(model.adapter.block_output == "tuple")
        yield
    finally:
        for i, block in enumerate(skipped):
            blocks[i] = block
        handle.remove()


def last_block_needed(points: Sequence[HookPoint], names: Sequence[str]) -> int | None:
    """The deepest block whose activations ``points`` read: -1 when they all come before block 0
    (embeddings), None when one comes after the last block (``ln_final.out``, ``logits``)."""
    first_block = next(i for i, n in enumerate(names) if n.startswith("blocks."))
    deepest = -1
    for point in points:
        if point.layer is not None:
            deepest = max(deepest, point.layer)
        elif names.index(point.source or point.name) > first_block:
            return None
    return deepest


class _Stopped(Exception):
    """Raised where the forward is cut off; caught by `stopping_after`."""


@contextmanager
def stopping_after(model: HookedModel, layer: int | None) -> Iterator[list[bool]]:
    """Within the block, a forward ends after block ``layer`` (-1: before block 0; None: runs to
    the end) and returns normally to the ``with`` statement. The yielded list holds one bool
    per forward cut off (so the caller knows no logits were made)."""
    stopped: list[bool] = []
    if layer is None:
        yield stopped
        return
    blocks = model.hf.get_submodule(model.adapter.layers)
    if not -1 <= layer < len(blocks):
        raise SelectionError(f"stop layer {layer} out of range for {len(blocks)} blocks")
    after = blocks[layer + 1] if layer + 1 < len(blocks) else model.hf.get_submodule(model.adapter.components.ln_final)

    def stop(module: nn.Module, args: tuple, kwargs: dict):
        raise _Stopped

    handle = after.register_forward_pre_hook(stop, with_kwargs=True, prepend=True)
    try:
        yield stopped
    except _Stopped:
        stopped.append(True)
    finally:
        handle.remove()
