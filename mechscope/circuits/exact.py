"""Exact edge patching: the ground truth EAP estimates. The score of edge u -> v is
metric(clean run with only u -> v ablated) - metric(clean run), summed over prompts: one
edge-patched forward per edge, ``variants_per_pass`` edges stacked on the batch axis per forward
(the per-edge evaluation ACDC repeats, one removal per variant)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..causal.metrics import checked_metric, logit_diff
from ..data.tasks import PromptPairs
from .faithfulness import evaluate_circuits
from .graph import Graph
from .result import CircuitScores


def edge_patching(model, pairs: PromptPairs, metric: Callable = logit_diff, *,
                  edges: Sequence[tuple[int, int]] | None = None, ablation: str = "corrupted",
                  variants_per_pass: int = 8, batch_size: int | None = None,
                  buffer_dtype: torch.dtype | None = None) -> CircuitScores:
    """Exact scores of ``edges`` (``(src, dst)`` indices; default every real edge), NaN elsewhere."""
    metric = checked_metric(metric)
    graph = Graph.from_model(model)
    edges = [tuple(e) for e in graph.real.nonzero().tolist()] if edges is None else [tuple(e) for e in edges]
    masks = []
    for i, j in edges:
        keep = graph.real.clone()
        keep[i, j] = False
        masks.append(keep)
    values, clean = evaluate_circuits(model, graph, pairs, metric, masks, ablation=ablation, batch_size=batch_size,
                                      variants_per_pass=variants_per_pass, buffer_dtype=buffer_dtype)
    scores = torch.full((graph.n_src, graph.n_dst), torch.nan)
    for (i, j), row in zip(edges, values):
        scores[i, j] = float((row - clean).sum())
    return CircuitScores(graph.cfg, "edge", scores, "exact", getattr(metric, "__name__", "metric"), ablation, 1,
                         len(pairs), float(clean.mean()), float("nan"))
