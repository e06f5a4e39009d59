"""Choosing a circuit from scores: top-n, threshold, greedy from the logits backward, and
pruning of nodes that lie on no path from the input to the logits. Membership is a bool
`[n_src, n_dst]` (True = edge kept) over the real edges of a `Graph`; top-n and threshold
also take position-aware scores `[n_spans, n_src, n_dst]` (every span's real edges)."""

from __future__ import annotations

import heapq

import torch

from ..errors import SelectionError
from .graph import Graph


def real_edges(graph: Graph, scores: torch.Tensor) -> torch.Tensor:
    """The real edges in the shape of ``scores`` (`[n_src, n_dst]` or `[n_spans, n_src, n_dst]`)."""
    if tuple(scores.shape[-2:]) != (graph.n_src, graph.n_dst) or scores.ndim not in (2, 3):
        raise SelectionError(f"edge scores must be [n_src, n_dst] = [{graph.n_src}, {graph.n_dst}] (or "
                             f"[n_spans, n_src, n_dst] position-aware), got {tuple(scores.shape)}")
    return graph.real if scores.ndim == 2 else graph.real[None].expand_as(scores)


def _ranked(graph: Graph, scores: torch.Tensor, absolute: bool) -> torch.Tensor:
    """Scores as ranked (``|score|`` if absolute), ``-inf`` off the real edges and at NaN."""
    real = real_edges(graph, scores)
    ranked = scores.float().abs() if absolute else scores.float().clone()
    ranked[~real | ranked.isnan()] = -torch.inf
    return ranked


def top_n(graph: Graph, scores: torch.Tensor, n: int, *, absolute: bool = True) -> torch.Tensor:
    """The ``n`` real edges with the largest (absolute) scores; ties broken by index (stable)."""
    total = int(real_edges(graph, scores).sum())
    if not 0 <= n <= total:
        raise SelectionError(f"n must be in [0, {total}] (the real edges), got {n}")
    ranked = _ranked(graph, scores, absolute).flatten()
    order = torch.sort(ranked, descending=True, stable=True).indices[:n]
    keep = torch.zeros(ranked.numel(), dtype=torch.bool)
    keep[order] = True
    return keep.reshape(scores.shape)


def threshold(graph: Graph, scores: torch.Tensor, tau: float, *, absolute: bool = True) -> torch.Tensor:
    """The real edges whose (absolute) score is at least ``tau``."""
    return _ranked(graph, scores, absolute) >= float(tau)


def greedy(graph: Graph, scores: torch.Tensor, n: int, *, absolute: bool = True) -> torch.Tensor:
    """``n`` edges chosen from the logits backward: start with the edges into the logits; take
    the best candidate; when its source joins the circuit, the edges into that node's inputs
    become candidates. Every chosen edge is on a path to the logits."""
    if not 0 <= n <= graph.n_edges:
        raise SelectionError(f"n must be in [0, {graph.n_edges}] (the real edges), got {n}")
    ranked = _ranked(graph, scores, absolute)
    keep = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    owned = [graph.owner[:, j].nonzero()[:, 0].tolist() for j in range(graph.n_dst)]
    inputs_of: dict[int, list[int]] = {}
    for j, owners in enumerate(owned):
        for i in owners:
            inputs_of.setdefault(i, []).append(j)
    heap: list[tuple[float, int, int]] = []
    opened: set[int] = set()

    def open_destination(j: int) -> None:
        if j in opened:
            return
        opened.add(j)
        for i in range(graph.destinations[j].prefix):
            heapq.heappush(heap, (-float(ranked[i, j]), i, j))

    open_destination(graph.n_dst - 1)
    in_circuit: set[int] = set()
    while n > 0 and heap:
        _, i, j = heapq.heappop(heap)
        keep[i, j] = True
        n -= 1
        if i not in in_circuit:
            in_circuit.add(i)
            for dst in inputs_of.get(i, []):
                open_destination(dst)
    return keep


def nodes_of(graph: Graph, keep: torch.Tensor) -> torch.Tensor:
    """`[n_src]` bool: source nodes with a kept outgoing edge and (the input aside) a kept
    incoming one (at any span, for position-aware ``keep`` `[n_spans, n_src, n_dst]`)."""
    if keep.ndim == 3:
        keep = keep.any(0)
    has_out = keep.any(dim=1)
    has_in = (graph.owner & keep.any(dim=0)[None, :]).any(dim=1)
    has_in[0] = True
    return has_out & has_in


def prune(graph: Graph, keep: torch.Tensor) -> torch.Tensor:
    """``keep`` without the edges of nodes that lie on no path from the input to the logits:
    repeatedly drop nodes lacking a kept incoming (the input excepted) or outgoing edge, and the
    edges from or into dropped nodes, until nothing changes. Never adds an edge."""
    keep = keep & graph.real
    while True:
        nodes = nodes_of(graph, keep)
        dst_alive = (graph.owner & nodes[:, None]).any(dim=0)
        dst_alive[-1] = True  # the logits
        new = keep & nodes[:, None] & dst_alive[None, :]
        if torch.equal(new, keep):
            return keep
        keep = new
