"""Subgraph faithfulness by intervention: keeping every node gives the real model exactly (and
faithfulness 1), keeping none faithfulness 0; in the linear setting (constrained features,
frozen attention) a subgraph's faithfulness is the kept share of each logit's direct input, as
the graph's own edges say."""

from __future__ import annotations

import pytest
import torch
from test_graph_attribution import _built

import mechscope as ms


def test_everything_kept_is_the_model_and_nothing_kept_is_zero():
    model, tokens, transcoders, graph = _built("llama")
    everything = torch.ones(graph.n_nodes, dtype=torch.bool)
    for mode in ("real", "replacement"):
        frame = ms.subgraph_faithfulness(model, transcoders, graph, everything, mode=mode)
        assert (frame["faithfulness"] - 1).abs().max() < 1e-5
        logits = model(tokens)[0, -1]
        demeaned = (logits - logits.mean())[graph.logit_tokens]
        torch.testing.assert_close(torch.tensor(frame["full"].to_numpy()).float(), demeaned, rtol=1e-4, atol=1e-4)
    frame = ms.subgraph_faithfulness(model, transcoders, graph, torch.zeros_like(everything))
    assert frame["faithfulness"].abs().max() < 1e-6


def test_linear_faithfulness_is_the_kept_share_of_direct_input():
    model, _, transcoders, graph = _built("gpt2")
    pruned = graph.prune(node_threshold=0.6, edge_threshold=0.9)
    frame = ms.subgraph_faithfulness(model, transcoders, graph, pruned.kept, constrained=True, freeze_attention=True)
    kept_sources = pruned.kept.clone()
    kept_sources[graph.first_token:] = True  # tokens always stay
    for j in range(len(graph.logit_labels)):
        row = graph.adjacency[graph.logit_node(j), : graph.first_logit]
        kept = (row * kept_sources[: graph.first_logit]).sum() - row[graph.first_token :].sum()
        total = row.sum() - row[graph.first_token :].sum()
        assert frame["faithfulness"][j] == pytest.approx(float(kept / total), rel=1e-4, abs=1e-4)
    assert 0 < pruned.kept[: graph.first_token].sum() < graph.first_token


def test_bad_masks_are_refused():
    model, _, transcoders, graph = _built("llama")
    with pytest.raises(ms.SelectionError, match="pruned graph"):
        ms.subgraph_faithfulness(model, transcoders, graph)
    with pytest.raises(ms.SelectionError, match="bool mask"):
        ms.subgraph_faithfulness(model, transcoders, graph, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ms.SelectionError, match="mode"):
        ms.subgraph_faithfulness(model, transcoders, graph.prune(), mode="frozen")
