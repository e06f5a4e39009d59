"""The batched-variant engine: many variants of one run, stacked on the batch axis.

Patching, path patching and causal tracing all evaluate many *variants* of one run of ``n``
prompts: the same forward with some activations replaced. Every variant equals the run up to
the first block it touches, so the engine groups variants by that start layer, stacks up to
``max_rows // n`` of them on the batch axis (``k * n`` rows, variant-major: row ``v * n + i``
is prompt ``i`` of variant ``v``, as `PromptPairs.tile` lays out the pairs), and runs each
stack from its start block on the run's recorded residual (`HookedModel.run_from`), so the
prefix is never recomputed. What a variant does is the caller's: it supplies the hooks of a
stack (or a whole forward) and a readout of the logits.

    sweep = VariantSweep(model, run_tokens, run_cache, max_rows=256)   # cache: blocks.{l}.resid_pre
    values = sweep.evaluate(cells, start_of=lambda cell: cell[0],
                            forward=lambda stack: sweep.run(stack, hooks_for(stack)),
                            readout=lambda logits, stack: metric(logits, pairs.tile(len(stack))))
    # values: [len(cells), n], in the order of ``cells``
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from ..errors import SelectionError
from ..models.hooked import HookedModel

V = TypeVar("V")


def tile(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` `[n, ...]` stacked ``k`` times, variant-major: `[k * n, ...]`."""
    return x.repeat(k, *([1] * (x.ndim - 1)))


def resid_names(layers: Sequence[int]) -> list[str]:
    """The residual-stream names a sweep starting at ``layers`` needs recorded from the run."""
    return [f"blocks.{layer}.resid_pre" for layer in layers]


@dataclass(frozen=True)
class Stack(Generic[V]):
    """Variants run together: all start at block ``layer``; ``len(stack)`` is ``k``.
    ``indices`` are the variants' positions in the sequence the stacks were cut from."""

    layer: int
    variants: list[V]
    indices: list[int]

    def __len__(self) -> int:
        return len(self.variants)


class VariantSweep:
    """Runs stacks of variants of one run of ``tokens`` `[n, pos]`.

    resid: the run's recorded ``blocks.{l}.resid_pre`` `[n, pos, d_model]` for every start
      layer used (an `ActivationCache` or a dict). max_rows: rows per forward; per_stack
      overrides the number of variants per forward (default ``max(1, max_rows // n)``).
    """

    def __init__(self, model: HookedModel, tokens: torch.Tensor, resid: Mapping[str, torch.Tensor], *,
                 max_rows: int = 256, per_stack: int | None = None):
        if tokens.ndim != 2:
            raise SelectionError(f"a sweep runs token ids [n, pos], got shape {tuple(tokens.shape)}")
        if max_rows < 1 or (per_stack is not None and per_stack < 1):
            raise SelectionError(f"max_rows and variants per pass must be at least 1, got {max_rows}, {per_stack}")
        self.model, self.tokens, self.resid = model, tokens, resid
        self.n = tokens.shape[0]
        self.per_stack = per_stack or max(1, max_rows // self.n)

    def stacks(self, variants: Sequence[V], start_of: Callable[[V], int]) -> Iterator[Stack[V]]:
        """The variants grouped by start layer (ascending, in their given order within a layer),
        cut into stacks of at most ``per_stack``."""
        by_layer: dict[int, list[int]] = {}
        for i, variant in enumerate(variants):
            by_layer.setdefault(start_of(variant), []).append(i)
        for layer in sorted(by_layer):
            group = by_layer[layer]
            for i in range(0, len(group), self.per_stack):
                indices = group[i : i + self.per_stack]
                yield Stack(layer, [variants[j] for j in indices], indices)

    def start(self, stack: Stack, layer: int | None = None) -> torch.Tensor:
        """The run's residual before block ``layer`` (default the stack's), tiled: `[k * n, pos, d]`."""
        layer = stack.layer if layer is None else layer
        return tile(self.resid[f"blocks.{layer}.resid_pre"], len(stack))

    def run(self, stack: Stack, hooks: Any = None, *, start: torch.Tensor | None = None, layer: int | None = None,
            logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `[k * n, pos or len(logits_at), d_vocab]` of the stack's variants: blocks from
        ``layer`` (default the stack's start) on ``start`` (default `start`), with ``hooks`` active."""
        layer = stack.layer if layer is None else layer
        start = self.start(stack, layer) if start is None else start
        with self.model.hooks(hooks):
            return self.model.run_from(layer, start, tile(self.tokens, len(stack)), logits_at=logits_at)

    def evaluate(self, variants: Sequence[V], *, start_of: Callable[[V], int],
                 forward: Callable[[Stack[V]], torch.Tensor],
                 readout: Callable[[torch.Tensor, Stack[V]], torch.Tensor]) -> torch.Tensor:
        """``readout(forward(stack), stack)`` `[k * n]` for every stack, reassembled per variant:
        `[len(variants), n]` in the order of ``variants``, on the CPU in float32."""
        out = torch.empty(len(variants), self.n)
        for stack in self.stacks(variants, start_of):
            out[stack.indices] = readout(forward(stack), stack).float().cpu().reshape(len(stack), self.n)
        return out
