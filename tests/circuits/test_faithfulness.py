"""Faithfulness curves: the normalisation, the rankings and edge counts, the areas (CPR, CMD),
bootstrap intervals, against direct evaluations of the circuits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_tiny
from helpers import pairs_for

import mechscope.circuits as C
from mechscope.causal.metrics import logit_diff
from mechscope.circuits.faithfulness import curve_areas, edge_counts, rankings


@pytest.fixture(scope="module")
def setup():
    tiny = build_tiny("llama")
    model, pairs = tiny.model, pairs_for(tiny.tokens)
    scores = C.eap(model, pairs)
    curve = C.faithfulness(model, pairs, scores, percents=(5, 20, 50, 100), n_bootstrap=200)
    return model, pairs, scores, curve


def test_curve_matches_direct_evaluation(setup):
    model, pairs, scores, curve = setup
    graph = scores.graph
    keep = C.top_n(graph, scores.scores, curve.n_edges[1])  # 20 % by |score|
    empty = torch.zeros_like(graph.real)
    values, clean = C.evaluate_circuits(model, graph, pairs, logit_diff, [keep, empty])
    expected = (values[0].mean() - values[1].mean()) / (clean.mean() - values[1].mean())
    frame = curve.to_dataframe()
    row = frame[(frame.ranking == "absolute") & (frame.percent == 20)].iloc[0]
    assert row.faithfulness == pytest.approx(expected, abs=1e-5)
    assert row.n_edges == round(0.2 * graph.n_edges)
    assert np.allclose(curve.values[:, -1].numpy(), 1.0, atol=1e-5)  # 100 %: the full model
    with torch.no_grad():
        corrupted = logit_diff(model(pairs.corrupted), pairs).double().mean()
    assert curve.empty_metric == pytest.approx(float(corrupted), abs=1e-5)


def test_areas_are_trapezoids(setup):
    _, _, _, curve = setup
    x = np.array(curve.percents) / 100
    f_signed, f_abs = curve.values[0].numpy(), curve.values[1].numpy()
    by_hand = sum((x[i + 1] - x[i]) * (f_signed[i] + f_signed[i + 1]) / 2 for i in range(len(x) - 1))
    assert curve.areas["signed"][0] == pytest.approx(by_hand)
    gaps = np.abs(1 - f_abs)
    assert curve.areas["absolute"][1] == pytest.approx(sum((x[i + 1] - x[i]) * (gaps[i] + gaps[i + 1]) / 2
                                                           for i in range(len(x) - 1)))
    assert curve_areas([0, 100], np.array([1.0, 1.0])) == (1.0, 0.0)
    table = curve.table()
    assert list(table.ranking) == ["signed", "absolute", "random"] and {"CPR", "CMD"} <= set(table.columns)


def test_bootstrap_intervals_bracket_the_estimate(setup):
    _, _, _, curve = setup
    low, high = curve.ci[..., 0].numpy(), curve.ci[..., 1].numpy()
    values = curve.values.numpy()
    assert (low <= values + 1e-9).mean() > 0.8 and (high >= values - 1e-9).mean() > 0.8
    for ranking in ("signed", "absolute"):
        (cpr_low, cpr_high), _ = curve.areas_ci[ranking]
        assert cpr_low <= cpr_high


def test_rankings_and_counts():
    graph = C.Graph({"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 4})
    scores = torch.randn(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(0)) * graph.real
    orders = rankings(graph, scores)
    flat = scores.flatten()
    assert float(flat[orders["signed"][0]]) == float(scores[graph.real].min())  # most harmful to ablate first
    assert float(flat[orders["absolute"][0]].abs()) == float(scores[graph.real].abs().max())
    assert sorted(orders["random"].tolist()) == sorted(orders["signed"].tolist())
    assert torch.equal(rankings(graph, scores, seed=0)["random"], orders["random"])
    assert edge_counts(graph, (0.1, 50, 100)) == [1, round(graph.n_edges / 2), graph.n_edges]
    loss_like = rankings(graph, scores, higher_is_better=False)
    assert float(flat[loss_like["signed"][0]]) == float(scores[graph.real].max())


def test_signed_selection_is_the_signed_ranking(setup):
    """``top_n(absolute=False)`` picks the circuit the signed faithfulness curve evaluates."""
    _, _, scores, _ = setup
    graph = scores.graph
    order = rankings(graph, scores.scores)["signed"][:25]
    keep = scores.top_n(25, absolute=False).in_graph.flatten()
    assert set(keep.nonzero()[:, 0].tolist()) == set(order.tolist())
