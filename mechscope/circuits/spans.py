"""Span schemas for position-aware circuits (Haklay et al. 2025): every token position of every
prompt belongs to one named span (a template field such as IO, S1, S2, END for IOI, or one
span per position), and an edge u -> v becomes one edge per span: u's output at the span's
positions into v's input at the same positions.

The residual stream is per position, so every edge of the graph is within a position; the
attention heads move information across positions. A q-input edge at span s is read by the
queries at s; a k- or v-input edge at span s is read as the keys and values *at s* by every
later query: the cross-position part of a head is its k/v edges' span (the key side) feeding
its q span (the query side). Scores, masks and circuits gain a leading span axis
`[n_spans, n_src, n_dst]`.

    spans = Spans.from_positions(pairs, ms.ioi_positions(pairs))   # IO, S1, S2, END, other
    scores = ms.circuits.attribute(model, pairs, spans=spans)      # scores [5, n_src, n_dst]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..data.tasks import PromptPairs
from ..errors import SelectionError


@dataclass(frozen=True)
class Spans:
    """index: `[n, pos]` long, the span of each token of each prompt; names: the spans' names."""

    index: torch.Tensor
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        index = torch.as_tensor(self.index)
        if index.ndim != 2 or index.dtype not in (torch.int64, torch.int32) or not self.names:
            raise SelectionError(f"a span index is [n, pos] integers with named spans, got {tuple(index.shape)} "
                                 f"{index.dtype} and {len(self.names)} names")
        if int(index.min()) < 0 or int(index.max()) >= len(self.names):
            raise SelectionError(f"span indices must be in [0, {len(self.names)}) (one per name)")
        if len(set(self.names)) != len(self.names):
            raise SelectionError(f"span names must differ, got {list(self.names)}")
        object.__setattr__(self, "index", index.long().cpu())
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))

    @classmethod
    def per_position(cls, pairs: PromptPairs) -> Spans:
        """One span per position (``"p0"``, ``"p1"``, ...): fully position-resolved edges."""
        n, pos = pairs.clean.shape
        return cls(torch.arange(pos).expand(n, pos).clone(), tuple(f"p{p}" for p in range(pos)))

    @classmethod
    def from_positions(cls, pairs: PromptPairs, fields: Mapping[str, torch.Tensor | int], *,
                       rest: str = "other") -> Spans:
        """Spans from named positions: ``fields`` maps a name to each prompt's position of it
        (`[n]` or one int for all; later fields win where two share a position); every other
        position is the span ``rest`` (left out when no position remains)."""
        n, pos = pairs.clean.shape
        if rest in fields:
            raise SelectionError(f"{rest!r} names the remaining positions; call a field something else")
        index = torch.full((n, pos), -1, dtype=torch.long)
        rows = torch.arange(n)
        for k, (name, where) in enumerate(fields.items()):
            at = torch.as_tensor(where).long().expand(n)
            if int(at.min()) < -pos or int(at.max()) >= pos:
                raise SelectionError(f"positions of {name!r} must be in [-{pos}, {pos}), got {at.tolist()}")
            index[rows, at % pos] = k
        names = tuple(fields)
        if bool((index < 0).any()):
            index[index < 0] = len(names)
            names = (*names, rest)
        return cls(index, names)

    def __len__(self) -> int:
        return len(self.names)

    def rows(self, rows: slice) -> Spans:
        """The spans of the prompts ``rows``."""
        return Spans(self.index[rows], self.names)

    def check(self, tokens: torch.Tensor) -> None:
        """Raise unless this index covers ``tokens`` `[n, pos]` exactly."""
        if tuple(self.index.shape) != tuple(tokens.shape):
            raise SelectionError(f"the span index is {tuple(self.index.shape)} but the prompts are "
                                 f"{tuple(tokens.shape)}: build the spans from these prompts")

    def order(self) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """``(order, bounds)``: the flat token indices (into `[n * pos]`) sorted by span, and
        each span's ``[start, end)`` in that order (empty spans have start == end)."""
        flat = self.index.flatten()
        order = torch.sort(flat, stable=True).indices
        counts = torch.bincount(flat, minlength=len(self.names)).tolist()
        bounds, start = [], 0
        for count in counts:
            bounds.append((start, start + count))
            start += count
        return order, bounds
