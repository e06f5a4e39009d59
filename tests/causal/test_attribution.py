"""Attribution patching equals the directional derivative it claims to be (checked by central
finite differences in float64), and shares activation patching's layout."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from mechscope.causal.attribution import attribution_patching
from mechscope.causal.cells import cell_grid
from mechscope.causal.metrics import logit_diff
from mechscope.causal.patching import activation_patching
from mechscope.data.tasks import PromptPairs


def _pairs(n=2, pos=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, 97, (n, pos), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 1:3] = torch.randint(3, 97, (n, 2), generator=gen)
    return PromptPairs(clean, corrupted, torch.randint(3, 97, (n,), generator=gen), torch.randint(3, 97, (n,), generator=gen))


def _moved(model, pairs, grid, cell, source, run, step):
    """Metric of the corrupted run with ``cell`` moved by ``step`` along (clean - corrupted)."""
    name = grid.name(cell[0])
    point = model.hook_point(name)
    index = grid.index(point, cell, len(point.layout))

    def move(x, ctx):
        x = x.clone()
        x[index] = run[name][index] + step * (source[name][index] - run[name][index])
        return x

    with torch.no_grad(), model.hooks({name: move}):
        return logit_diff(model(pairs.corrupted), pairs)


# LayerNorm families run entirely in float64 once converted, so central differences are
# accurate to ~1e-9; HF's RMSNorm computes in float32 whatever the input dtype, which leaves
# ~1e-7 relative noise in every forward (GPT-J likewise upcasts q and k): those families take a larger step and tolerance.
FAMILIES = {"gpt2": (1e-5, 1e-6), "gptj": (1e-3, 5e-3), "gpt_neox": (1e-5, 1e-6), "llama": (1e-3, 5e-3),
            "gemma2": (1e-3, 5e-3)}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("component,per_position", [("heads", False), ("heads", True), ("resid_pre", True),
                                                    ("mlp_out", True), ("head_pattern", False), ("head_k", False)])
def test_attribution_is_the_directional_derivative(family, component, per_position):
    model = build_tiny(family).model
    model.hf.double()
    pairs = _pairs()
    result = attribution_patching(model, pairs, component, per_position=per_position)
    grid = cell_grid(model, component, pairs.clean.shape[1], per_position)
    assert result.raw.shape == (*grid.shape, len(pairs))
    names = [grid.name(l) for l in range(grid.n_layers)]
    _, source = model.run_with_cache(pairs.clean, names)
    _, run = model.run_with_cache(pairs.corrupted, names)
    gen = torch.Generator().manual_seed(1)

    def differs(cell) -> bool:  # a cell where clean and corrupted differ, so the derivative is not 0 by construction
        name = grid.name(cell[0])
        index = grid.index(model.hook_point(name), cell, len(model.hook_point(name).layout))
        return bool((source[name][index] != run[name][index]).any())

    cells = [cell for cell in grid.cells() if differs(cell)]
    assert cells
    checked = []
    for i in torch.randperm(len(cells), generator=gen)[:6].tolist():
        cell = cells[i]
        step, tolerance = FAMILIES[family]
        derivative = (_moved(model, pairs, grid, cell, source, run, step)
                      - _moved(model, pairs, grid, cell, source, run, -step)) / (2 * step)
        estimate = result.raw[cell] - result.corrupted_metric
        torch.testing.assert_close(estimate.double(), derivative.cpu(), atol=tolerance, rtol=tolerance)
        checked.append(float(derivative.abs().max()))
    assert max(checked) > 10 * tolerance  # at least one checked derivative is well above the tolerance


def test_attribution_matches_activation_patching_layout_and_linear_cells(tiny):
    model = tiny.model
    pairs = _pairs(seed=3)
    exact = activation_patching(model, pairs, "heads")
    approx = attribution_patching(model, pairs, "heads")
    assert approx.raw.shape == exact.raw.shape and approx.axes == exact.axes
    torch.testing.assert_close(approx.clean_metric, exact.clean_metric)
    torch.testing.assert_close(approx.corrupted_metric, exact.corrupted_metric)
    # Nothing differs before the first corrupted slot: the estimate there is exactly zero change.
    resid = attribution_patching(model, pairs, "resid_pre", direction="noise")
    torch.testing.assert_close(resid.raw[:, 0], resid.clean_metric.expand(model.cfg.n_layers, -1))
