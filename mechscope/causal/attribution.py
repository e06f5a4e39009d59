"""Attribution patching: the first-order (gradient) estimate of every activation-patching cell.

For each cell, the effect of patching is approximated by ``(source - run activation) .
d metric / d activation``, with the gradient taken in the unpatched run (Nanda 2023;
Syed et al. 2023). One forward of the source prompts, one forward and one backward of the
run prompts give every cell of every layer at once; the result has the layout of
`activation_patching`, so the two can be compared cell for cell.
"""

from __future__ import annotations

import torch

from ..data.tasks import PromptPairs
from ..models.hooked import HookedModel
from ..models.runtime import checked_loss
from .cells import CellGrid, cell_grid
from .metrics import checked_metric, logit_diff
from .patching import Metric, run_and_source
from .result import PatchingResult


def attribution_patching(model: HookedModel, pairs: PromptPairs, component: str = "heads", *,
                         per_position: bool | None = None, over: tuple[str, ...] | None = None,
                         metric: Metric = logit_diff, direction: str = "denoise") -> PatchingResult:
    """Gradient estimate of `activation_patching` over the same cells, in 2 forwards + 1 backward.

    ``raw`` `[n_layers, *cell axes, n_prompts]` is the run's metric plus the estimated change:
    denoising takes the gradient in the corrupted run and the clean-minus-corrupted difference,
    noising the gradient in the clean run and the corrupted-minus-clean difference.
    ``metric`` must be differentiable: a constant or detached value is a `MetricError`.
    """
    metric = checked_metric(metric)
    run_tokens, source_tokens = run_and_source(pairs, direction, model)
    grid = cell_grid(model, component, pairs.clean.shape[1], per_position, over)
    names = [grid.name(l) for l in range(grid.n_layers)]
    source_logits, source = model.run_with_cache(source_tokens, names)
    run_logits, run = model.run_with_cache(run_tokens, names, grad_metric=lambda logits: checked_loss(
        metric(logits, pairs).sum(), "the metric, differentiated by attribution patching,"))
    run_metric = metric(run_logits, pairs).float().cpu()
    source_metric = metric(source_logits, pairs).float().cpu()
    clean_metric, corrupted_metric = (source_metric, run_metric) if direction == "denoise" else (run_metric, source_metric)
    raw = torch.stack([
        _per_cell(grid, model, name, (source[name].float() - run[name].float()) * run.grads[name].float())
        for name in names
    ])
    return PatchingResult(component, direction, raw.cpu() + run_metric, clean_metric, corrupted_metric, grid.axes,
                          method="attribution")


def _per_cell(grid: CellGrid, model: HookedModel, name: str, product: torch.Tensor) -> torch.Tensor:
    """``product`` (difference x gradient, in the activation's layout) summed within each cell:
    `[*cell axes, n_prompts]`."""
    point = model.hook_point(name)
    keep = [point.head_dim if axis == "head" else point.pos_dim for axis in grid.axes]
    rest = [d for d in range(1, product.ndim) if d not in keep]
    return product.permute(*keep, 0, *rest).flatten(len(keep) + 1).sum(-1)
