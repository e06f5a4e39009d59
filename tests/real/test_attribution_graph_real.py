"""Attribution graphs on the bundled model (30 layers, GQA, tied embeddings): with random
TopK transcoders on every layer, every edge into the sampled rows equals the brute-force
removal of its source in the frozen replacement model; rows plus dropped plus bias are the
values; the replacement model with error terms is the real model."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import mechscope as ms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "graphs"))
from test_graph_attribution import _brute_force  # noqa: E402


def test_edges_on_the_bundled_model(smol):
    tokens = smol.to_tokens("The capital of France is")
    transcoders = ms.TranscoderSet.fresh(smol, d_sae=256, k=8, seed=0)
    graph = ms.attribution_graph(smol, transcoders, tokens, max_logits=2, max_features=48, batch_size=25,
                                 progress=False)
    assert graph.n_features == 48 and graph.n_active == 30 * (tokens.shape[1] - 1) * 8
    base, removed, _ = _brute_force(smol, tokens, transcoders, graph)
    reference = (base[None] - removed).T
    rows = graph.has_row.nonzero()[:, 0]
    measured, expected = graph.adjacency[rows, : graph.first_logit], reference[rows]
    assert (measured - expected).abs().max() <= 1e-5 * expected.abs().max(), float((measured - expected).abs().max())  # 3.4e-6 measured
    torch.testing.assert_close(graph.adjacency[rows].sum(-1) + graph.dropped[rows] + graph.bias[rows],
                               graph.values[rows], rtol=1e-4, atol=1e-3)
    out = ms.feature_intervention(smol, transcoders, tokens, [], replacement=True)
    torch.testing.assert_close(out.logits, smol(tokens)[0], rtol=1e-3, atol=1e-3)
