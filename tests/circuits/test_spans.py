"""Position-aware circuits: span schemas, span-resolved EAP scores (summing to the plain ones,
exact per position on a model linear in its residual), span-resolved edge patches against the
textbook two-forward recipe restricted to a span's positions, faithfulness and results."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny
from helpers import linear_model, pairs_for, two_forward_edge_patch

import mechscope as ms
import mechscope.circuits as C
from mechscope.causal.metrics import logit_diff
from mechscope.circuits import Spans
from mechscope.errors import MechscopeError


@pytest.fixture(scope="module")
def llama():
    tiny = build_tiny("llama")
    pairs = pairs_for(tiny.tokens)
    return tiny.model, pairs, Spans.from_positions(pairs, {"early": 1, "corrupted": 4, "END": -1})


def patch_at(model, graph, pairs, src: int, dst: int, where: torch.Tensor) -> torch.Tensor:
    """logit_diff `[n]` of the clean run with edge src -> dst patched at the positions ``where`` only."""
    return two_forward_edge_patch(model, graph, pairs, src, dst, logit_diff, where=where)


def test_schemas():
    pairs = pairs_for(torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(0)))
    per = Spans.per_position(pairs)
    assert per.names == ("p0", "p1", "p2", "p3", "p4", "p5") and per.index[1].tolist() == list(range(6))
    named = Spans.from_positions(pairs, {"A": torch.tensor([1, 2]), "END": -1})
    assert named.names == ("A", "END", "other")
    assert named.index.tolist() == [[2, 0, 2, 2, 2, 1], [2, 2, 0, 2, 2, 1]]
    order, bounds = named.order()
    assert bounds == [(0, 2), (2, 4), (4, 12)] and order[:4].tolist() == [1, 8, 5, 11]
    assert Spans.from_positions(pairs, {f"p{p}": p for p in range(6)}).names == tuple(f"p{p}" for p in range(6))
    with pytest.raises(MechscopeError, match="must be in"):
        Spans(torch.tensor([[0, 3]]), ("a", "b"))
    with pytest.raises(MechscopeError, match="differ"):
        Spans(torch.tensor([[0, 1]]), ("a", "a"))
    with pytest.raises(MechscopeError, match="other"):
        Spans.from_positions(pairs, {"other": 0})
    with pytest.raises(MechscopeError, match="positions of 'A'"):
        Spans.from_positions(pairs, {"A": 9})
    with pytest.raises(MechscopeError, match="build the spans"):
        named.check(torch.zeros(2, 7, dtype=torch.long))


def test_ioi_positions(smol):
    pairs = ms.ioi(smol, 4)  # BABA and ABBA alternate: IO and S1 swap places
    positions = ms.ioi_positions(pairs)
    for i in range(4):
        tokens = smol.to_str_tokens(pairs.clean[i])
        io, s = smol.to_str_tokens(pairs.answers[i : i + 1])[0], smol.to_str_tokens(pairs.wrong[i : i + 1])[0]
        assert tokens[int(positions["IO"][i])] == io and tokens[int(positions["S1"][i])] == s
        assert tokens[int(positions["S2"][i])] == s and int(positions["S2"][i]) > int(positions["S1"][i])
        assert int(positions["END"][i]) == len(tokens) - 1
    assert positions["IO"].tolist() != [int(positions["IO"][0])] * 4
    spans = Spans.from_positions(pairs, positions)
    assert spans.names == ("IO", "S1", "S2", "END", "other")
    with pytest.raises(MechscopeError, match="not IOI"):
        ms.ioi_positions(pairs_for(pairs.clean))


@pytest.mark.parametrize("method", ["EAP", "EAP-IG-inputs", "EAP-IG-activations"])
def test_span_scores_sum_to_the_plain_scores(llama, method):
    model, pairs, spans = llama
    plain = C.attribute(model, pairs, method=method, steps=2)
    split = C.attribute(model, pairs, method=method, steps=2, spans=spans)
    assert split.scores.shape == (len(spans), *plain.scores.shape) and split.spans == list(spans.names)
    scale = float(plain.scores.abs().max())
    assert torch.allclose(split.scores.sum(0), plain.scores, atol=1e-5 * scale)
    assert split.clean_metric == pytest.approx(plain.clean_metric)


def test_per_position_eap_is_exact_on_a_linear_model():
    model = linear_model()
    pairs = pairs_for(torch.randint(3, 97, (3, 10), generator=torch.Generator().manual_seed(1)))
    spans = Spans.per_position(pairs)
    scores = C.attribute(model, pairs, spans=spans).scores
    graph = C.Graph.from_model(model)
    with torch.no_grad():
        clean = logit_diff(model(pairs.clean), pairs)
    names = {d.name: j for j, d in enumerate(graph.destinations)}
    checked = 0
    for src, dst in [("input", "a0.h1<q>"), ("a0.h2", "a1.h0<k>"), ("a0.h0", "a1.h3<v>"), ("a0.h3", "m1"),
                     ("m0", "logits"), ("input", "m0")]:
        i, j = graph.src_names.index(src), names[dst]
        for p in (3, 4, 9):
            where = torch.zeros_like(pairs.clean, dtype=torch.bool)
            where[:, p] = True
            exact = float((patch_at(model, graph, pairs, i, j, where) - clean).sum())
            assert float(scores[p, i, j]) == pytest.approx(exact, rel=1e-3, abs=1e-3), (src, dst, p)
            checked += abs(exact) > 1e-2
    assert checked >= 6  # the checks are not all of zero effects


def test_span_patch_is_the_two_forward_recipe_at_those_positions(llama):
    model, pairs, spans = llama
    graph = C.Graph.from_model(model)
    ablated = C.ablated_sources(model, graph, pairs.corrupted)
    names = {d.name: j for j, d in enumerate(graph.destinations)}
    for src, dst, span in [("a0.h2", "a1.kv0<k>", 1), ("input", "a1.h1<q>", 0), ("a0.h0", "logits", 2),
                           ("m0", "a1.kv1<v>", 3)]:
        i, j = graph.src_names.index(src), names[dst]
        keep = graph.real[None].repeat(len(spans), 1, 1)
        keep[span, i, j] = False
        W = C.pruned_weights(graph, keep, spans=len(spans))
        with torch.no_grad():
            ours = logit_diff(C.patched_logits(model, graph, pairs.clean, ablated, W, spans=spans), pairs)
        recipe = patch_at(model, graph, pairs, i, j, spans.index == span)
        assert torch.allclose(ours, recipe, atol=1e-5), (src, dst, span)


def test_span_masks_agree_with_plain_masks(llama):
    model, pairs, spans = llama
    graph = C.Graph.from_model(model)
    ablated = C.ablated_sources(model, graph, pairs.corrupted)
    keep = graph.real & (torch.rand(graph.real.shape, generator=torch.Generator().manual_seed(3)) < 0.5)
    with torch.no_grad():
        plain = C.patched_logits(model, graph, pairs.clean, ablated, C.pruned_weights(graph, keep))
        same = keep[None].repeat(len(spans), 1, 1)
        split = C.patched_logits(model, graph, pairs.clean, ablated,
                                 C.pruned_weights(graph, same, spans=len(spans)), spans=spans)
    assert torch.allclose(plain, split, atol=1e-5)
    values, clean = C.evaluate_circuits(model, graph, pairs, logit_diff,
                                        [graph.real[None].repeat(len(spans), 1, 1),
                                         torch.zeros(len(spans), *graph.real.shape, dtype=torch.bool)], spans=spans)
    corrupted = logit_diff(model(pairs.corrupted), pairs).detach().double().numpy()
    assert abs(values[0] - clean).max() < 1e-5 and abs(values[1] - corrupted).max() < 1e-5
    with pytest.raises(MechscopeError, match="position-aware masks"):
        C.patched_logits(model, graph, pairs.clean, ablated, C.pruned_weights(graph, same, spans=len(spans)))


def test_position_aware_results(llama, tmp_path):
    model, pairs, spans = llama
    scores = C.eap(model, pairs, spans=spans)
    frame = scores.to_dataframe()
    graph = scores.graph
    assert len(frame) == len(spans) * graph.n_edges and set(frame["span"]) == set(spans.names)
    assert frame["edge"].str.contains("@END").any()
    circuit = scores.top_n(20)
    assert circuit.in_graph.shape == scores.scores.shape and circuit.n_edges == 20 and circuit.spans == scores.spans
    top = scores.top(20)
    assert set(top["edge"]) == set(circuit.to_dataframe()["edge"])
    assert scores.threshold(0.0).n_edges == int((graph.real[None] & (scores.scores.abs() >= 0)).sum())
    with pytest.raises(MechscopeError, match="follows paths"):
        scores.greedy(10)
    with pytest.raises(MechscopeError, match="follows paths"):
        scores.top_n(10, prune=True)
    with pytest.raises(MechscopeError, match="no positions"):
        C.to_eap_ig(circuit)
    assert 'label="END"' in C.to_dot(circuit) or 'label="corrupted"' in C.to_dot(circuit)
    assert len(scores.plot().data) and len(circuit.plot(kind="graph").data)
    back = C.CircuitScores.load(scores.save(tmp_path / "spans.safetensors"))
    assert back.spans == scores.spans and back.scores.equal(scores.scores)
    curve = C.faithfulness(model, pairs, scores, percents=(10, 50, 100), n_bootstrap=0, spans=spans)
    assert curve.values[:, -1].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert curve.positions == "spans: early, corrupted, END, other"
    with pytest.raises(MechscopeError, match="pass the Spans"):
        C.faithfulness(model, pairs, scores, percents=(100,), n_bootstrap=0)
    with pytest.raises(MechscopeError, match="edge scores"):
        C.attribute(model, pairs, level="node", spans=spans)
