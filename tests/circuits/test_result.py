"""The circuit results beyond the protocol's checks: the graph view, the tables, selections."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch

from mechscope.circuits import CircuitScores, Graph
from mechscope.errors import SelectionError

CFG = {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "parallel_attn_mlp": False, "d_model": 8}


def _scores() -> CircuitScores:
    graph = Graph(CFG)
    values = torch.randn(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(0)) * graph.real
    return CircuitScores(CFG, "edge", values, "EAP", "logit_diff", "corrupted", n_prompts=2)


def test_graph_view_draws_every_edge_with_hover_values():
    circuit = _scores().greedy(10)
    fig = circuit.plot(kind="graph")
    assert isinstance(fig, go.Figure)
    hover = [t for t in fig.data if t.customdata is not None and t.mode == "markers"]
    assert len(hover) == 1
    edges = {row[0] for row in hover[0].customdata}
    assert edges == set(circuit.to_dataframe()["edge"])
    values = sorted(float(row[1]) for row in hover[0].customdata)
    assert values == pytest.approx(sorted(circuit.to_dataframe()["score"]))
    lines = [t for t in fig.data if t.mode == "lines"]
    assert sum(t.x.count(None) for t in lines) == circuit.n_edges  # one segment per edge
    assert len({t.line.width for t in lines}) > 1  # widths follow |score|
    with pytest.raises(SelectionError, match="kind"):
        circuit.plot(kind="sankey")


def test_tables_and_selections():
    scores = _scores()
    frame = scores.to_dataframe()
    assert len(frame) == scores.graph.n_edges and set(frame.qkv) == {"q", "k", "v", ""}
    assert scores.top(3)["score"].abs().tolist() == sorted(frame.score.abs(), reverse=True)[:3]
    circuit = scores.threshold(float(frame.score.abs().quantile(0.9)), prune=False)
    assert circuit.n_edges == int((frame.score.abs() >= frame.score.abs().quantile(0.9)).sum())
    assert all(h.startswith("a") for h in circuit.heads())
    node = CircuitScores(CFG, "node", torch.arange(11.0) - 5, "EAP", "m", "corrupted")
    chosen = node.top_n(3)
    kept = {n for n, on in zip(node.graph.src_names, chosen.nodes_in_graph.tolist()) if on}
    assert kept == {"input", "a0.h0", "m1"}  # |-5|, |5|, then the first of |-4| and |4|
    assert set(chosen.to_dataframe().edge) == {"input->a0.h0<q>", "input->a0.kv0<k>", "input->a0.kv0<v>",
                                               "input->m1", "a0.h0->m1", "input->logits", "a0.h0->logits",
                                               "m1->logits"}
    with pytest.raises(SelectionError, match="node scores"):
        node.greedy(3)


def test_curves_of_several_methods_on_one_plot():
    from mechscope.circuits import FaithfulnessCurve, curves_figure

    def curve(method: str, shift: float) -> FaithfulnessCurve:
        values = torch.tensor([[0.2, 0.6, 1.0], [0.1 + shift, 0.5, 1.0], [0.0, 0.1, 1.0]])
        ci = torch.stack([values - 0.05, values + 0.05], -1)
        areas = {r: (0.5, 0.5) for r in FaithfulnessCurve.RANKINGS}
        return FaithfulnessCurve([1.0, 10.0, 100.0], [1, 10, 100], values, ci, areas,
                                 {r: ((0, 1), (0, 1)) for r in areas}, method, "m", "corrupted", 4, 1.0, 0.0)

    fig = curves_figure({"EAP": curve("EAP", 0.0), "pruning": curve("edge-pruning", 0.2)})
    named = {t.name: t for t in fig.data}
    assert set(named) == {"EAP", "pruning", "random edges"}
    assert list(named["pruning"].y) == pytest.approx([0.3, 0.5, 1.0])  # the absolute ranking by default
    assert list(named["random edges"].y) == pytest.approx([0.0, 0.1, 1.0])
    assert list(named["EAP"].error_y.array) == pytest.approx([0.05, 0.05, 0.05])
    assert fig.layout.xaxis.type == "log"
