"""Circuit selection: top-n, threshold, greedy and pruning, against brute-force references."""

from __future__ import annotations

import torch

from mechscope.circuits import Graph, greedy, nodes_of, prune, threshold, top_n

CFG = {"n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "parallel_attn_mlp": False, "d_model": 8}


def _scores(graph: Graph, seed: int = 0) -> torch.Tensor:
    return torch.randn(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(seed)) * graph.real


def _dst_node_of(graph: Graph, j: int) -> set[int]:
    return set(graph.owner[:, j].nonzero()[:, 0].tolist())


def reachable(graph: Graph, keep: torch.Tensor) -> tuple[set[int], set[int]]:
    """Source nodes reachable from the input, and source nodes from which the logits are
    reachable, along kept edges (a plain graph search)."""
    edges = keep.nonzero().tolist()
    forward, frontier = {0}, [0]
    while frontier:
        u = frontier.pop()
        for i, j in edges:
            if i == u:
                for v in _dst_node_of(graph, j) - forward:
                    forward.add(v)
                    frontier.append(v)
    backward = set()
    targets = {graph.n_dst - 1}
    changed = True
    while changed:
        changed = False
        for i, j in edges:
            if (j in targets) and i not in backward:
                backward.add(i)
                targets |= {jj for jj in range(graph.n_dst) if i in _dst_node_of(graph, jj)}
                changed = True
    return forward, backward


def test_top_n_and_threshold_match_a_sort():
    graph = Graph(CFG)
    scores = _scores(graph)
    real = graph.real.nonzero().tolist()
    ranked = sorted(real, key=lambda e: -abs(float(scores[e[0], e[1]])))
    keep = top_n(graph, scores, 17)
    assert {tuple(e) for e in keep.nonzero().tolist()} == {tuple(e) for e in ranked[:17]}
    signed = top_n(graph, scores, 5, absolute=False)
    best = sorted(real, key=lambda e: -float(scores[e[0], e[1]]))[:5]
    assert {tuple(e) for e in signed.nonzero().tolist()} == {tuple(e) for e in best}
    tau = abs(float(scores[ranked[9][0], ranked[9][1]]))
    assert int(threshold(graph, scores, tau).sum()) == 10
    assert not (top_n(graph, scores, graph.n_edges) & ~graph.real).any()


def test_prune_keeps_exactly_the_edges_on_input_to_logits_paths():
    graph = Graph(CFG)
    for seed in range(5):
        keep = top_n(graph, _scores(graph, seed), 40)
        pruned = prune(graph, keep)
        forward, backward = reachable(graph, keep)
        alive = forward & backward
        expected = {(i, j) for i, j in keep.nonzero().tolist()
                    if i in alive and (j == graph.n_dst - 1 or _dst_node_of(graph, j) & alive)}
        assert {tuple(e) for e in pruned.nonzero().tolist()} == expected
        assert set(nodes_of(graph, pruned).nonzero()[:, 0].tolist()) == {i for i, _ in expected}


def test_greedy_builds_backward_from_the_logits():
    graph = Graph(CFG)
    scores = _scores(graph, 3)
    for n in (1, 5, 30):
        keep = greedy(graph, scores, n)
        assert int(keep.sum()) == n
        _, backward = reachable(graph, keep)
        assert {i for i, _ in keep.nonzero().tolist()} <= backward  # every edge leads to the logits
    first = greedy(graph, scores, 1)
    j_logits = graph.n_dst - 1
    best_into_logits = int(scores[:, j_logits].abs().argmax())
    assert first[best_into_logits, j_logits] and int(first.sum()) == 1


def test_greedy_equals_an_exhaustive_frontier_search():
    """The reference: at each step take the best edge into the logits or into a node already chosen."""
    graph = Graph({"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": True, "d_model": 4})
    scores = _scores(graph, 7)
    keep, chosen = torch.zeros_like(graph.real), set()
    for _ in range(12):
        open_dst = [j for j in range(graph.n_dst) if j == graph.n_dst - 1 or _dst_node_of(graph, j) & chosen]
        candidates = [(i, j) for j in open_dst for i in range(graph.destinations[j].prefix) if not keep[i, j]]
        i, j = max(candidates, key=lambda e: (abs(float(scores[e])), -e[0], -e[1]))
        keep[i, j] = True
        chosen.add(i)
    assert torch.equal(greedy(graph, scores, 12), keep)
