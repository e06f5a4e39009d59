"""What a patching sweep patches: components, and the cells (layer x head x position) of each.

A cell is ``(layer, *coords)``; its coordinates index the activation's head axis, its
position axis, or both. Activation and attribution patching share this geometry, so their
results line up cell for cell.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..errors import SelectionError
from ..models.hook_points import HookPoint
from ..models.hooked import HookedModel

# Short names for components (the canonical way is a name pattern, e.g. "blocks.*.attn.z"):
# word -> (activation suffix, True if its cells are heads by default)
COMPONENTS = {
    "resid_pre": ("resid_pre", False),
    "resid_mid": ("resid_mid", False),
    "resid_post": ("resid_post", False),
    "attn_out": ("attn.out", False),
    "mlp_out": ("mlp.out", False),
    "heads": ("attn.z", True),
    "head_q": ("attn.q", True),
    "head_k": ("attn.k", True),  # per key/value head
    "head_v": ("attn.v", True),  # per key/value head
    "head_pattern": ("attn.pattern", True),  # position = query position
}
AXES = ("head", "pos")


@dataclass(frozen=True)
class CellGrid:
    """The cells of one component: ``shape`` = ``(n_layers, *sizes)``, one size per axis
    (``"head"``, ``"pos"``; none when a cell is a whole layer's activation)."""

    component: str
    suffix: str
    axes: tuple[str, ...]
    shape: tuple[int, ...]

    @property
    def n_layers(self) -> int:
        return self.shape[0]

    def name(self, layer: int) -> str:
        return f"blocks.{layer}.{self.suffix}"

    def cells(self, layer: int | None = None) -> list[tuple[int, ...]]:
        """Every cell ``(layer, *coords)`` in row-major order (of one layer if given)."""
        layers = range(self.n_layers) if layer is None else (layer,)
        return [(l, *coords) for l in layers for coords in itertools.product(*(range(s) for s in self.shape[1:]))]

    def index(self, point: HookPoint, cell: tuple[int, ...], ndim: int, rows: slice = slice(None)) -> tuple:
        """Index of ``cell`` in an activation of ``point`` with ``ndim`` axes, batch rows ``rows``."""
        index: list = [rows] + [slice(None)] * (ndim - 1)
        for axis, coord in zip(self.axes, cell[1:]):
            index[point.head_dim if axis == "head" else point.pos_dim] = coord
        return tuple(index)


def cell_grid(model: HookedModel, component: str, n_pos: int, per_position: bool | None = None,
              over: tuple[str, ...] | None = None) -> CellGrid:
    """The grid of ``component``: a name pattern covering one activation of every block
    (``"blocks.*.attn.z"``) or a short word of `COMPONENTS` (``"heads"``).

    over: what a cell is, ``("head",)``, ``("pos",)``, ``("head", "pos")`` or ``()`` (a whole
    layer's activation). Default: per position for residual/output activations, per head (all
    positions) for activations with a head axis. ``per_position`` (the older switch) adds or
    drops the position axis of the default."""
    suffix = _suffix(model, component)
    point = model.hook_point(f"blocks.0.{suffix}")
    by_head = point.head_dim is not None
    if over is None:
        if per_position is None:
            per_position = not by_head
        over = (("head",) if by_head else ()) + (("pos",) if per_position else ())
    elif per_position is not None:
        raise SelectionError("give over= or per_position=, not both")
    over = tuple(over)
    if any(a not in AXES for a in over) or len(set(over)) != len(over) or list(over) != sorted(over, key=AXES.index):
        raise SelectionError(f"over must list axes from {AXES} in that order, got {over!r}")
    if "head" in over and not by_head:
        raise SelectionError(f"{point.name!r} has no head axis (layout {point.layout!r}); over=('pos',) or ()")
    sizes = {"head": point.n_heads, "pos": n_pos}
    return CellGrid(component, suffix, over, (model.cfg.n_layers, *(sizes[a] for a in over)))


def _suffix(model: HookedModel, component: str) -> str:
    """The block activation suffix ``component`` (a word or a pattern over every block) names."""
    if not isinstance(component, str):
        raise TypeError(f"component must be a name pattern or one of {list(COMPONENTS)}, got {type(component).__name__}")
    if component in COMPONENTS:
        suffix = COMPONENTS[component][0]
        if f"blocks.0.{suffix}" not in model.names:
            raise SelectionError(f"{model.cfg.family} has no {suffix!r} activation (e.g. parallel blocks have no resid_mid)")
        return suffix
    if not component.startswith("blocks."):
        raise SelectionError(f"unknown component {component!r}: give a block activation pattern such as "
                             f"'blocks.*.attn.z' or one of {', '.join(COMPONENTS)}")
    points = model.hook_points(component)  # unknown names: the close-match error
    suffixes = {p.suffix for p in points}
    layers = sorted(p.layer for p in points)
    if len(suffixes) != 1 or layers != list(range(model.cfg.n_layers)) or points[0].site is None:
        raise SelectionError(f"{component!r} matches {len(points)} names; a sweep's component is one activation of "
                             f"every block, e.g. 'blocks.*.{points[0].suffix}'")
    return suffixes.pop()


def write_cells(x: torch.Tensor, grid: CellGrid, point: HookPoint, variants: list[tuple[int, ...]],
                source: torch.Tensor) -> torch.Tensor:
    """``x`` `[k * n, ...]` (k stacked variants of n prompts) with variant ``i``'s cell copied
    from ``source`` `[n, ...]` into rows ``i*n .. (i+1)*n``; returns a new tensor."""
    n = source.shape[0]
    x = x.clone()
    for i, cell in enumerate(variants):
        target = grid.index(point, cell, x.ndim, slice(i * n, (i + 1) * n))
        x[target] = source[grid.index(point, cell, source.ndim)]
    return x
