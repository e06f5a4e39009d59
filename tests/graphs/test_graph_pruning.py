"""Pruning and the graph scores on hand-built graphs whose answers are worked out by hand,
and the invariants of a pruned real (tiny-model) graph."""

from __future__ import annotations

import pytest
import torch
from test_graph_attribution import _built

from mechscope.graphs.influence import cumulative_keep, node_influence, row_normalised
from mechscope.graphs.pruning import graph_scores, prune_masks

# nodes: 0 feature f, 1 feature g (weak), 2 error e, 3 token t, 4 logit L
KINDS = torch.tensor([0, 0, 1, 2, 3])


def _hand_graph() -> torch.Tensor:
    a = torch.zeros(5, 5)
    a[4, 0], a[4, 2], a[4, 1] = 3.0, 1.0, 0.04  # L <- f, e, g
    a[0, 3] = 2.0  # f <- t
    a[1, 3] = -0.5  # g <- t
    return a


def test_influence_and_scores_by_hand():
    a = _hand_graph()
    normalised = row_normalised(a)
    torch.testing.assert_close(normalised[4], torch.tensor([3, 0.04, 1, 0, 0]) / 4.04)
    influence = node_influence(normalised, torch.tensor([0, 0, 0, 0, 1.0]))
    share_f, share_g, share_e = 3 / 4.04, 0.04 / 4.04, 1 / 4.04
    torch.testing.assert_close(influence, torch.tensor([share_f, share_g, share_e, share_f + share_g, 0]))
    scores = graph_scores(a, torch.tensor([1.0]), KINDS)
    assert scores["replacement"] == pytest.approx((share_f + share_g) / (share_f + share_g + share_e))
    # inputs: L (non-error share 1 - share_e, weight 1), f and g (all from the token, weights = their influence)
    expected = ((1 - share_e) * 1 + 1 * share_f + 1 * share_g) / (1 + share_f + share_g)
    assert scores["completeness"] == pytest.approx(expected)


def test_pruning_drops_the_weak_feature_and_keeps_tokens_and_logits():
    nodes, edges = prune_masks(_hand_graph(), torch.tensor([1.0]), KINDS, node_threshold=0.8, edge_threshold=0.98)
    assert nodes.tolist() == [True, False, True, True, True]  # f and e carry 80%: g goes
    assert edges[4, 0] and edges[4, 2] and edges[0, 3] and not edges[:, 1].any() and not edges[1].any()
    nodes, _ = prune_masks(_hand_graph(), torch.tensor([1.0]), KINDS, node_threshold=0.5, edge_threshold=0.98)
    assert nodes.tolist() == [True, False, False, True, True]  # f alone is over half


def test_cumulative_keep():
    scores = torch.tensor([0.1, 0.5, 0.0, 0.4])
    assert cumulative_keep(scores, 0.5).tolist() == [False, True, False, False]
    assert cumulative_keep(scores, 0.6).tolist() == [False, True, False, True]
    assert cumulative_keep(scores, 1.0).tolist() == [True, True, False, True]  # a zero score is never kept
    assert not cumulative_keep(torch.zeros(3), 0.8).any()


def test_a_pruned_graph_keeps_its_accounts():
    _, _, _, graph = _built("llama")
    pruned = graph.prune()
    assert 0 < int(pruned.kept.sum()) < graph.n_nodes
    assert pruned.kept[graph.first_token:].all()  # tokens and logits stay
    rows = pruned.has_row
    torch.testing.assert_close(pruned.adjacency[rows].sum(-1) + pruned.dropped[rows] + pruned.bias[rows],
                               pruned.values[rows])
    assert len(pruned.to_dataframe()) == int(pruned.kept.sum())
    assert not pruned.adjacency[~pruned.kept].any() and not pruned.adjacency[:, ~pruned.kept].any()
    looser = graph.prune(node_threshold=0.95, edge_threshold=0.999)
    assert int(looser.kept.sum()) >= int(pruned.kept.sum())
    full, kept = graph.scores(), pruned.scores()
    assert 0 <= full["replacement"] <= 1 and 0 <= full["completeness"] <= 1 and 0 <= kept["completeness"] <= 1
