"""Activation patching, batched: many patched variants per forward pass.

Denoising (default) runs the corrupted prompts and restores one clean activation per
variant; noising runs the clean prompts and inserts one corrupted activation. Each cell of
the sweep (see `cells`) is one variant; variants are stacked along the batch axis
(``variants x prompts`` rows). Every variant equals the unpatched run up to its cell's
layer, so a forward of variants patched at layer ``l`` starts at block ``l`` from the
recorded residual (`HookedModel.run_from`) instead of recomputing the blocks before it;
cells where the source activation equals the run's (e.g. positions before the first
corrupted token) are not run at all: their metric is the unpatched run's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.tasks import PromptPairs
from ..errors import SelectionError
from ..models.hooked import HookedModel
from .cells import CellGrid, cell_grid, write_cells
from .metrics import checked_metric, logit_diff
from .result import PatchingResult
from .sweep import Stack, VariantSweep, resid_names, tile

Metric = Callable[[torch.Tensor, PromptPairs], torch.Tensor]


def run_and_source(pairs: PromptPairs, direction: str, model: HookedModel | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens run, tokens the patched activations come from)`` for a direction; with
    ``model``, the pairs' answers are checked against its vocabulary."""
    if not isinstance(pairs, PromptPairs):
        raise SelectionError(f"pairs must be PromptPairs (e.g. from pairs_from_strings), got {type(pairs).__name__}")
    if model is not None:
        d_vocab = model.cfg.d_vocab
        outside = [int(t) for t in torch.cat([pairs.answers, pairs.wrong]) if int(t) >= d_vocab]
        if outside:
            raise SelectionError(f"answer token {outside[0]} is outside the model's vocabulary of {d_vocab} tokens")
    if direction == "denoise":
        return pairs.corrupted, pairs.clean
    if direction == "noise":
        return pairs.clean, pairs.corrupted
    raise SelectionError(f"direction must be 'denoise' or 'noise', got {direction!r}")


def activation_patching(model: HookedModel, pairs: PromptPairs, component: str = "resid_pre", *,
                        per_position: bool | None = None, over: tuple[str, ...] | None = None,
                        metric: Metric = logit_diff, direction: str = "denoise", answer_logits_only: bool = False,
                        variants_per_pass: int | None = None, max_rows: int = 256) -> PatchingResult:
    """Patch every cell of ``component`` and measure ``metric``.

    component: one activation of every block, as a name pattern (``"blocks.*.resid_pre"``,
      ``"blocks.*.attn.z"``, ``"blocks.*.attn.pattern"``, ...) or a short word of
      `cells.COMPONENTS` (``"heads"`` = ``"blocks.*.attn.z"``).
    over: what a cell is: ``("pos",)`` (default for residual/output activations), ``("head",)``
      (default with a head axis: each head at all positions), ``("head", "pos")`` or ``()``
      (a whole layer). per_position: the older switch, adding/dropping ``"pos"`` of the default.
    direction: "denoise" (run corrupted, restore clean) or "noise" (run clean, insert corrupted).
    answer_logits_only: compute the unembedding only at the answer positions (for metrics that
      declare `metrics.reads_answer_only`, as the built-in ones do): faster, but the result then
      differs from full forwards in the last bits (the unembedding runs on fewer rows).
    variants_per_pass: cells per forward (default: as many as fit in ``max_rows`` rows).
    Returns a `PatchingResult` with ``raw`` `[n_layers, *cell axes, n_prompts]`.
    """
    metric = checked_metric(metric)
    run_tokens, source_tokens = run_and_source(pairs, direction, model)
    if answer_logits_only and not getattr(metric, "reads_answer_only", False):
        raise SelectionError("answer_logits_only needs a metric that reads only the answer positions; "
                             "declare yours with mechscope.causal.metrics.reads_answer_only if it does")
    n = len(pairs)
    grid = cell_grid(model, component, pairs.clean.shape[1], per_position, over)
    names = [grid.name(l) for l in range(grid.n_layers)]
    starts = resid_names(range(grid.n_layers))
    with torch.no_grad():
        source_logits, source = model.run_with_cache(source_tokens, names)
        # The run's own activations serve only to find no-op cells; a cached pattern would switch
        # the run to explicit attention, so patterns are not compared (see _changed_cells).
        explicit = model.hook_point(names[0]).explicit_attention
        compared = [] if explicit else names
        run_logits, run_cache = model.run_with_cache(run_tokens, list(dict.fromkeys(compared + starts)))
        clean_logits, corrupted_logits = (
            (source_logits, run_logits) if direction == "denoise" else (run_logits, source_logits))
        clean_metric = metric(clean_logits, pairs).float().cpu()
        corrupted_metric = metric(corrupted_logits, pairs).float().cpu()
        run_metric = corrupted_metric if direction == "denoise" else clean_metric
        raw = run_metric.expand(*grid.shape, n).clone()  # cells whose patch changes nothing keep it
        cells = [cell for layer in range(grid.n_layers) for cell in (
            grid.cells(layer) if explicit
            else _changed_cells(model, grid, layer, source[names[layer]], run_cache[names[layer]]))]
        sweep = VariantSweep(model, run_tokens, run_cache, max_rows=max_rows, per_stack=variants_per_pass)

        def forward(stack: Stack) -> torch.Tensor:
            logits_at = tile(pairs.answer_positions[:, None], len(stack)) if answer_logits_only else None
            return _run_variants(sweep, grid, stack, source[names[stack.layer]], logits_at)

        def readout(logits: torch.Tensor, stack: Stack) -> torch.Tensor:
            tiled = pairs.tile(len(stack))
            if answer_logits_only:
                tiled.answer_positions = torch.zeros_like(tiled.answer_positions)
            return metric(logits, tiled)

        values = sweep.evaluate(cells, start_of=lambda cell: cell[0], forward=forward, readout=readout)
        for cell, value in zip(cells, values):
            raw[cell] = value
    return PatchingResult(component, direction, raw, clean_metric, corrupted_metric, grid.axes)


def _changed_cells(model: HookedModel, grid: CellGrid, layer: int, source: torch.Tensor,
                   run: torch.Tensor) -> list[tuple[int, ...]]:
    """The cells of ``layer`` where the source differs from the run; patching the others
    writes identical values, so their forward would be the unpatched run itself. (Patterns are
    always run: hooking one switches its layer to explicit attention, a computation of its own.)"""
    point = model.hook_point(grid.name(layer))
    return [cell for cell in grid.cells(layer)
            if not torch.equal(source[grid.index(point, cell, source.ndim)], run[grid.index(point, cell, run.ndim)])]


def _run_variants(sweep: VariantSweep, grid: CellGrid, stack: Stack, source: torch.Tensor,
                  logits_at: torch.Tensor | None) -> torch.Tensor:
    """Logits of the run with each cell of ``stack`` (all in its layer) patched from ``source``,
    one variant per block of rows; at the positions ``logits_at`` `[rows, 1]` only, if given."""
    name = grid.name(stack.layer)
    point = sweep.model.hook_point(name)
    if grid.suffix == "resid_pre":
        start = write_cells(sweep.start(stack), grid, point, stack.variants, source)
        return sweep.run(stack, start=start, logits_at=logits_at)
    hooks = {name: lambda x, ctx: write_cells(x, grid, point, stack.variants, source)}
    return sweep.run(stack, hooks, logits_at=logits_at)


def patch_one_by_one(model: HookedModel, pairs: PromptPairs, component: str = "resid_pre", *,
                     per_position: bool | None = None, over: tuple[str, ...] | None = None,
                     metric: Metric = logit_diff, direction: str = "denoise") -> torch.Tensor:
    """The naive reference: one full forward per cell, slicing the activation by hand.

    Returns the raw metric `[n_layers, *cell axes, n_prompts]`, which `activation_patching`
    reproduces bit for bit in far fewer forwards (used by the tests and bench/patching.py).
    """
    metric = checked_metric(metric)
    run_tokens, source_tokens = run_and_source(pairs, direction, model)
    grid = cell_grid(model, component, pairs.clean.shape[1], per_position, over)
    _, source = model.run_with_cache(source_tokens, f"blocks.*.{grid.suffix}")
    point = model.hook_point(grid.name(0))
    out = torch.empty(*grid.shape, len(pairs))
    for cell in grid.cells():
        name = grid.name(cell[0])
        index: list = [slice(None)] * len(point.layout)
        for axis, coord in zip(grid.axes, cell[1:]):
            index[point.head_dim if axis == "head" else point.pos_dim] = coord

        def patch(x: torch.Tensor, ctx, index: tuple = tuple(index), name: str = name) -> torch.Tensor:
            x = x.clone()
            x[index] = source[name][index]
            return x

        with torch.no_grad(), model.hooks({name: patch}):
            out[cell] = metric(model(run_tokens), pairs).float().cpu()
    return out
