"""Aggregating graphs: counted by hand on two graphs (one shared edge with a known weight);
a graph aggregated with itself has every edge at frequency 1 and its own weights."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

import mechscope as ms
from mechscope.graphs.aggregate import node_keys


@pytest.fixture(scope="module")
def graphs():
    tiny = build_tiny("llama")
    transcoders = ms.TranscoderSet.fresh(tiny.model, d_sae=24, k=3, seed=0)
    return [ms.attribution_graph(tiny.model, transcoders, tiny.tokens[i : i + 1, :8], max_logits=2,
                                 progress=False).prune() for i in range(2)]


def test_a_graph_with_itself(graphs):
    graph = graphs[0]
    summary = ms.aggregate_graphs([graph, graph]).to_dataframe()
    assert (summary["frequency"] == 1).all() and len(summary) == int((graph.adjacency != 0).sum())
    names = node_keys(graph)
    t, s = (graph.adjacency != 0).nonzero()[0].tolist()
    row = summary[(summary["target"] == names[t]) & (summary["source"] == names[s])]
    assert row["mean_weight"].item() == pytest.approx(float(graph.adjacency[t, s]))


def test_two_prompts_by_hand(graphs):
    a, b = graphs
    summary = ms.aggregate_graphs([a, b]).to_dataframe()
    edges_a = {(node_keys(a)[t], node_keys(a)[s]): float(a.adjacency[t, s]) for t, s in (a.adjacency != 0).nonzero().tolist()}
    edges_b = {(node_keys(b)[t], node_keys(b)[s]): float(b.adjacency[t, s]) for t, s in (b.adjacency != 0).nonzero().tolist()}
    assert len(summary) == len(edges_a.keys() | edges_b.keys())
    for (target, source), frequency, mean in zip(zip(summary["target"], summary["source"]), summary["frequency"],
                                                 summary["mean_weight"]):
        present = [(target, source) in edges for edges in (edges_a, edges_b)]
        assert frequency == sum(present) / 2
        total = edges_a.get((target, source), 0.0) + edges_b.get((target, source), 0.0)
        assert mean == pytest.approx(total / 2)
    assert "logit #0" in set(summary["target"])


def test_other_lengths_are_refused(graphs):
    tiny = build_tiny("llama")
    transcoders = ms.TranscoderSet.fresh(tiny.model, d_sae=24, k=3, seed=0)
    short = ms.attribution_graph(tiny.model, transcoders, tiny.tokens[:1, :5], max_logits=1, progress=False)
    with pytest.raises(ms.SelectionError, match="one template"):
        ms.aggregate_graphs([graphs[0], short])
    with pytest.raises(ms.SelectionError, match="at least one"):
        ms.aggregate_graphs([])
    assert torch.is_tensor(graphs[0].adjacency)
