"""Activation patching, batched: many patched variants per forward pass.

Denoising (default) runs the corrupted prompts and restores one clean activation per
variant; noising runs the clean prompts and inserts one corrupted activation. Each cell
of the sweep (a layer and a position, or a layer and a head) is one variant; variants are
stacked along the batch axis (``variants x prompts`` rows), so a sweep costs
``cells / variants_per_pass`` forwards instead of one per cell. The result is the metric
per cell and prompt, and its normalised mean (0 = corrupted behaviour, 1 = clean).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch

from ..data.tasks import PromptPairs
from ..errors import SelectionError
from ..models.hook_points import PATTERN_SUFFIXES
from ..models.hooked import HookedModel
from ..viz.heatmap import heatmap_html
from .metrics import logit_diff, normalized

Metric = Callable[[torch.Tensor, PromptPairs], torch.Tensor]

# component -> (activation suffix, what a cell indexes besides the layer)
COMPONENTS = {
    "resid_pre": ("resid_pre", "pos"),
    "resid_mid": ("resid_mid", "pos"),
    "resid_post": ("resid_post", "pos"),
    "attn_out": ("attn.out", "pos"),
    "mlp_out": ("mlp.out", "pos"),
    "heads": ("attn.z", "head"),
    "head_q": ("attn.q", "head"),
    "head_k": ("attn.k", "kv_head"),
    "head_v": ("attn.v", "kv_head"),
    "head_pattern": ("attn.pattern", "head"),
}


@dataclass
class PatchingResult:
    """``raw`` `[n_layers, n_cols, n_prompts]` metric per cell; ``values`` `[n_layers, n_cols]`
    its mean normalised by the clean and corrupted metrics."""

    component: str
    direction: str
    raw: torch.Tensor
    clean_metric: torch.Tensor
    corrupted_metric: torch.Tensor
    col_label: str

    @property
    def values(self) -> torch.Tensor:
        return normalized(self.raw.mean(-1), self.clean_metric.mean(), self.corrupted_metric.mean())

    def top(self, n: int = 5) -> list[tuple[int, int, float]]:
        """Cells with the largest normalised effect: ``(layer, col, value)``."""
        flat = self.values.flatten()
        order = flat.abs().argsort(descending=True)[:n]
        cols = self.values.shape[1]
        return [(int(i) // cols, int(i) % cols, float(flat[i])) for i in order]

    def to_dataframe(self) -> pd.DataFrame:
        layers, cols = self.values.shape
        return pd.DataFrame([{"layer": l, self.col_label: c, "normalized": float(self.values[l, c]),
                              "metric": float(self.raw[l, c].mean())} for l in range(layers) for c in range(cols)])

    def heatmap(self, col_labels: list[str] | None = None) -> str:
        layers, cols = self.values.shape
        return heatmap_html(self.values, [f"L{l}" for l in range(layers)],
                            col_labels or [f"{self.col_label} {c}" for c in range(cols)],
                            title=f"{self.direction} patching of {self.component} (normalised metric)")

    def _repr_html_(self) -> str:
        return self.heatmap()


def _cells(model: HookedModel, component: str, n_pos: int) -> tuple[str, list[tuple[int, int]], int, str]:
    if component not in COMPONENTS:
        raise SelectionError(f"unknown component {component!r}; choose from {', '.join(COMPONENTS)}")
    suffix, axis = COMPONENTS[component]
    if f"blocks.0.{suffix}" not in model.names:
        raise SelectionError(f"{model.cfg.family} has no {suffix!r} activation (e.g. parallel blocks have no resid_mid)")
    n_cols = {"pos": n_pos, "head": model.cfg.n_heads, "kv_head": model.cfg.n_kv_heads}[axis]
    cells = [(layer, col) for layer in range(model.cfg.n_layers) for col in range(n_cols)]
    return suffix, cells, n_cols, "pos" if axis == "pos" else "head"


def _cell_dim(point) -> int:
    """The axis a cell indexes: heads for per-head components, positions otherwise."""
    return point.head_dim if point.suffix.startswith("attn.") and point.suffix != "attn.out" else point.pos_dim


def _patcher(point, variants: list[tuple[int, tuple[int, int]]], n_prompts: int, source: torch.Tensor):
    """Hook writing, for each variant ``k``, the source's cell (a position or a head) into rows
    ``k*n .. (k+1)*n`` of the stacked batch."""
    dim = _cell_dim(point)

    def patch(x: torch.Tensor, ctx) -> torch.Tensor:
        x = x.clone()
        for k, (_, col) in variants:
            index = [slice(k * n_prompts, (k + 1) * n_prompts)] + [slice(None)] * (x.ndim - 1)
            index[dim] = col
            x[tuple(index)] = source[(slice(None), *index[1:])]
        return x

    return patch


def activation_patching(model: HookedModel, pairs: PromptPairs, component: str = "resid_pre", *,
                        metric: Metric = logit_diff, direction: str = "denoise",
                        variants_per_pass: int | None = None, max_rows: int = 256) -> PatchingResult:
    """Patch every (layer, position) or (layer, head) cell of ``component``.

    component: one of `COMPONENTS` (residual stream, attention or MLP output per position;
      a head's z, q, k, v or pattern at all positions).
    direction: "denoise" (run corrupted, restore clean) or "noise" (run clean, insert corrupted).
    variants_per_pass: cells per forward (default: as many as fit in ``max_rows`` rows).
    """
    if direction not in ("denoise", "noise"):
        raise SelectionError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    base, source_tokens = (pairs.corrupted, pairs.clean) if direction == "denoise" else (pairs.clean, pairs.corrupted)
    n = len(pairs)
    suffix, cells, n_cols, col_label = _cells(model, component, pairs.clean.shape[1])
    names = [f"blocks.{l}.{suffix}" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        source_logits, source = model.run_with_cache(source_tokens, names)  # the source run, cached once
        base_logits = model(base)
        clean_logits, corrupted_logits = (
            (source_logits, base_logits) if direction == "denoise" else (base_logits, source_logits))
        clean_metric = metric(clean_logits, pairs).float().cpu()
        corrupted_metric = metric(corrupted_logits, pairs).float().cpu()
        per_pass = variants_per_pass or max(1, max_rows // n)
        raw = torch.empty(model.cfg.n_layers, n_cols, n)
        for chunk in _chunks(cells, per_pass, one_layer_per_pass=suffix in PATTERN_SUFFIXES):
            by_layer: dict[int, list[tuple[int, tuple[int, int]]]] = {}
            for k, cell in enumerate(chunk):
                by_layer.setdefault(cell[0], []).append((k, cell))
            hooks = {
                names[layer]: _patcher(model.hook_point(names[layer]), variants, n, source[names[layer]])
                for layer, variants in by_layer.items()
            }
            with model.hooks(hooks):
                logits = model(base.repeat(len(chunk), 1))
            values = metric(logits, _repeat(pairs, len(chunk))).float().cpu().reshape(len(chunk), n)
            for k, (layer, col) in enumerate(chunk):
                raw[layer, col] = values[k]
    return PatchingResult(component, direction, raw, clean_metric, corrupted_metric, col_label)


def patch_one_by_one(model: HookedModel, pairs: PromptPairs, component: str = "resid_pre", *,
                     metric: Metric = logit_diff, direction: str = "denoise") -> torch.Tensor:
    """The naive reference: one forward per cell, slicing the activation by hand.

    Returns the raw metric `[n_layers, n_cols, n_prompts]`, which `activation_patching`
    reproduces bit for bit in far fewer forwards (used by the tests and bench/patching.py).
    """
    base, source_tokens = (pairs.corrupted, pairs.clean) if direction == "denoise" else (pairs.clean, pairs.corrupted)
    suffix, cells, n_cols, _ = _cells(model, component, pairs.clean.shape[1])
    _, source = model.run_with_cache(source_tokens, f"blocks.*.{suffix}")
    point = model.hook_point(f"blocks.0.{suffix}")
    dim = _cell_dim(point)
    out = torch.empty(model.cfg.n_layers, n_cols, len(pairs))
    for layer, col in cells:
        name = f"blocks.{layer}.{suffix}"

        def patch(x: torch.Tensor, ctx, col: int = col, name: str = name) -> torch.Tensor:
            x = x.clone()
            index = [slice(None)] * x.ndim
            index[dim] = col
            x[tuple(index)] = source[name][tuple(index)]
            return x

        with torch.no_grad(), model.hooks({name: patch}):
            out[layer, col] = metric(model(base), pairs).float().cpu()
    return out


def _chunks(cells: list[tuple[int, int]], size: int, one_layer_per_pass: bool) -> list[list[tuple[int, int]]]:
    """Cells grouped into forwards. A hook on a pattern switches its whole layer (every stacked
    variant) to explicit attention; keeping one layer per forward then gives every variant the
    same kernels as its own single forward, so batched results equal the naive loop bit for bit."""
    if not one_layer_per_pass:
        return [cells[i : i + size] for i in range(0, len(cells), size)]
    groups: dict[int, list[tuple[int, int]]] = {}
    for cell in cells:
        groups.setdefault(cell[0], []).append(cell)
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]


def _repeat(pairs: PromptPairs, times: int) -> PromptPairs:
    return PromptPairs(pairs.clean.repeat(times, 1), pairs.corrupted.repeat(times, 1), pairs.answers.repeat(times),
                       pairs.wrong.repeat(times), pairs.answer_positions.repeat(times))
