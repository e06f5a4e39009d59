"""Influence on the logits through an attribution graph (Ameisen et al. 2025): the
adjacency's absolute values normalised per target (each row sums to 1: the share of the
target's input coming from each source), then summed over paths of every length."""

from __future__ import annotations

import torch


def row_normalised(adjacency: torch.Tensor) -> torch.Tensor:
    """``|A|`` `[n, n]` (rows: targets, columns: sources) with each non-empty row divided by its sum."""
    weights = adjacency.abs()
    return weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)


def node_influence(normalised: torch.Tensor, weights: torch.Tensor, max_steps: int | None = None) -> torch.Tensor:
    """`[n]`: ``w A + w A^2 + ...`` for ``weights`` `[n]` on the targets (e.g. the logits'
    probabilities) and a row-normalised adjacency ``A`` `[n, n]` of a graph without cycles
    (paths end after at most ``n`` steps; ``max_steps`` caps them)."""
    total = torch.zeros_like(weights)
    current = weights
    for _ in range(max_steps or normalised.shape[0]):
        current = current @ normalised
        if not bool(current.any()):
            break
        total += current
    return total


def logit_weights(n_nodes: int, probs: torch.Tensor) -> torch.Tensor:
    """`[n_nodes]`: the logit nodes (the last ``len(probs)``) weighted by their probabilities
    (equal weights where a custom direction has none), zero elsewhere."""
    weights = torch.zeros(n_nodes)
    probs = probs.float()
    weights[n_nodes - len(probs):] = torch.where(probs.isnan(), 1.0 / len(probs), probs)
    return weights


def cumulative_keep(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """`[n]` bool: the highest ``scores`` (non-negative) whose running total first reaches
    ``threshold`` of the sum (ties broken by order; all False for an all-zero vector)."""
    total = scores.sum()
    keep = torch.zeros_like(scores, dtype=torch.bool)
    if total <= 0:
        return keep
    order = torch.argsort(scores, descending=True, stable=True)
    running = scores[order].cumsum(0) / total
    n_kept = int((running < threshold).sum()) + 1
    keep[order[: min(n_kept, len(scores))]] = True
    return keep & (scores > 0)
