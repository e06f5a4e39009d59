"""Pruning an attribution graph by cumulative influence, and its replacement and completeness
scores (the definitions of Ameisen et al. 2025 and circuit-tracer's defaults).

Influence is measured in the row-normalised graph (`influence.row_normalised`: each target's
absolute inputs as shares summing to 1) from the logits, weighted by their probabilities.
Pruning keeps the feature and error nodes that carry ``node_threshold`` of the total influence
(tokens and logits always stay), then, in the graph among those nodes, the edges whose score
(normalised weight times the influence of their target, plus its logit weight) carries
``edge_threshold`` of the total; then it drops, until nothing changes, features left without
an incoming or an outgoing edge and error or token nodes without an outgoing one.
"""

from __future__ import annotations

import torch

from .influence import cumulative_keep, logit_weights, node_influence, row_normalised


def prune_masks(adjacency: torch.Tensor, probs: torch.Tensor, kinds: torch.Tensor, *, node_threshold: float,
                edge_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept nodes [n], kept edges [n, n])`` of ``adjacency`` `[n, n]`; ``kinds`` `[n]`: 0
    feature, 1 error, 2 token, 3 logit (see the module docstring)."""
    n = adjacency.shape[0]
    weights = logit_weights(n, probs)
    influence = node_influence(row_normalised(adjacency), weights)
    pruned_kinds = kinds <= 1
    nodes = cumulative_keep(torch.where(pruned_kinds, influence, torch.zeros(())), node_threshold) | ~pruned_kinds
    among = adjacency * (nodes[:, None] & nodes[None, :])
    normalised = row_normalised(among)
    target_weight = node_influence(normalised, weights) + weights
    edges = cumulative_keep((normalised * target_weight[:, None]).flatten(), edge_threshold).view(n, n)
    while True:
        has_in, has_out = edges.any(1), edges.any(0)
        alive = nodes & torch.where(kinds == 0, has_in & has_out, torch.where(kinds == 3, True, has_out))
        edges = edges & alive[:, None] & alive[None, :]
        if torch.equal(alive, nodes):
            return nodes, edges
        nodes = alive


def graph_scores(adjacency: torch.Tensor, probs: torch.Tensor, kinds: torch.Tensor) -> dict[str, float]:
    """``{"replacement": ..., "completeness": ...}``: the share of the logits' end-to-end
    influence that starts at tokens rather than error nodes, and the influence-weighted mean
    share of each node's direct input that comes from non-error nodes."""
    n = adjacency.shape[0]
    weights = logit_weights(n, probs)
    normalised = row_normalised(adjacency)
    influence = node_influence(normalised, weights)
    tokens, errors = float(influence[kinds == 2].sum()), float(influence[kinds == 1].sum())
    has_input = normalised.sum(-1) > 0
    non_error = torch.where(has_input, 1 - normalised[:, kinds == 1].sum(-1), torch.zeros(()))
    output = (influence + weights) * has_input
    return {"replacement": tokens / (tokens + errors) if tokens + errors > 0 else float("nan"),
            "completeness": float((non_error * output).sum() / output.sum()) if output.sum() > 0 else float("nan")}
