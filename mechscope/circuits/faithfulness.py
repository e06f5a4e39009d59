"""Faithfulness of circuits (MIB circuit track): how much of the full model's behaviour a
circuit of the top k % of edges keeps, with everything outside it ablated.

    f(C) = (m(C) - m(empty)) / (m(full) - m(empty))

with m the mean metric over the prompts, m(full) the clean run (every edge kept) and m(empty)
every edge ablated (= the corrupted run under corrupted ablation). Circuits are the top
``percents`` % of real edges under three rankings: ``"signed"`` (by importance, the score's
sign read so that edges whose ablation lowers a higher-is-better metric come first: the CPR
ranking), ``"absolute"`` (by |score|: the CMD ranking) and ``"random"`` (a seeded random
order: the baseline). Areas use the fraction of edges (percent / 100) as x, by the trapezoid
rule over the given levels: CPR = area under f (signed ranking), CMD = area under |1 - f|
(absolute ranking); both are given for every ranking in `FaithfulnessCurve.table`.

Cost: one ablation forward and one clean forward per chunk of prompts, then one edge-patched
forward per circuit, ``variants_per_pass`` circuits stacked on the batch axis per forward.
Under ``torchrun`` each rank evaluates a contiguous share of the prompts and the per-prompt
metrics are gathered in prompt order, so every rank returns the single-process curve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..causal.metrics import answer_logits_view, checked_metric, logit_diff
from ..data.tasks import PromptPairs
from ..distributed import shard
from ..errors import SelectionError
from .graph import Graph
from .interventions import ABLATIONS, ablated_sources, patched_logits, pruned_weights
from .result import CircuitScores, FaithfulnessCurve
from .selection import real_edges
from .sharding import chunk_rows, chunks, gathered, local_pairs, mean_sources
from .spans import Spans

PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
RANKINGS = FaithfulnessCurve.RANKINGS


def rankings(graph: Graph, scores: torch.Tensor, *, higher_is_better: bool = True, seed: int = 0,
             score_kind: str = "effect") -> dict[str, torch.Tensor]:
    """Real-edge flat indices (into `[n_src * n_dst]`, or `[n_spans * n_src * n_dst]` for
    position-aware scores) in the order each ranking adds them (learned keep logits,
    ``score_kind="keep"``, rank by themselves under both "signed" and "absolute")."""
    real = real_edges(graph, scores).flatten().nonzero()[:, 0]
    values = torch.nan_to_num(scores.flatten()[real].double(), nan=0.0)
    if score_kind == "keep":
        importance = magnitude = values
    else:
        importance, magnitude = (-values if higher_is_better else values), values.abs()
    gen = torch.Generator().manual_seed(seed)
    return {"signed": real[torch.sort(importance, descending=True, stable=True).indices],
            "absolute": real[torch.sort(magnitude, descending=True, stable=True).indices],
            "random": real[torch.randperm(len(real), generator=gen)]}


def edge_counts(graph: Graph, percents: Sequence[float], n_spans: int = 1) -> list[int]:
    """Edges in a circuit of each percentage of the ``n_spans * n_edges`` real edges (rounded; at least 1)."""
    return [max(1, round(p / 100 * graph.n_edges * n_spans)) for p in percents]


def curve_areas(percents: Sequence[float], f: np.ndarray) -> tuple[float, float]:
    """``(area under f, area under |1 - f|)`` over x = percent / 100 (trapezoid rule)."""
    x = np.asarray(percents, dtype=float) / 100
    return float(np.trapezoid(f, x)), float(np.trapezoid(np.abs(1 - f), x))


def normalized_faithfulness(circuit: np.ndarray, full: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """f per circuit from per-prompt metrics ``circuit`` `[..., n]`, ``full`` / ``empty`` `[n]`
    (means over prompts first, then the ratio)."""
    low = empty.mean()
    return (circuit.mean(-1) - low) / (full.mean() - low)


def faithfulness(model, pairs: PromptPairs, scores: CircuitScores,
                 metric: Callable[[torch.Tensor, PromptPairs], torch.Tensor] = logit_diff, *,
                 percents: Sequence[float] = PERCENTS, ablation: str | None = None, higher_is_better: bool = True,
                 n_bootstrap: int = 1000, seed: int = 0, batch_size: int | None = None,
                 variants_per_pass: int = 4, buffer_dtype: torch.dtype | None = None,
                 spans: Spans | None = None) -> FaithfulnessCurve:
    """Faithfulness curves of the circuits ``scores`` ranks (see the module docstring).

    ablation: what edges outside a circuit carry (default the one the scores were computed
    with). n_bootstrap: resamples of the prompts for the 95% intervals (0: none).
    spans: the `Spans` of ``pairs`` when the scores are position-aware (percentages are then
    of the real edges at every span).
    """
    metric = checked_metric(metric)
    ablation = ablation or scores.ablation
    if ablation not in ABLATIONS:
        raise SelectionError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    if scores.level != "edge":
        raise SelectionError("faithfulness curves rank edges; these are node scores")
    graph = scores.graph
    if (graph.n_layers, graph.n_heads, graph.n_kv_heads) != (model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_kv_heads):
        raise SelectionError("these scores belong to a model of another shape")
    _check_spans(scores.spans, spans)
    counts = edge_counts(graph, percents, 1 if spans is None else len(spans))
    orders = rankings(graph, scores.scores, higher_is_better=higher_is_better, seed=seed,
                      score_kind=scores.score_kind)
    masks = [_mask(scores.scores.shape, orders[r][:k]) for r in RANKINGS for k in counts]
    masks.append(torch.zeros(scores.scores.shape, dtype=torch.bool))  # the empty circuit
    per_prompt, full = _evaluate(model, graph, pairs, metric, masks, ablation, batch_size, variants_per_pass,
                                 buffer_dtype, spans)
    circuit, empty = per_prompt[:-1].reshape(len(RANKINGS), len(counts), -1), per_prompt[-1]
    values = normalized_faithfulness(circuit, full, empty)
    areas = _areas(percents, values)
    ci = np.full((*values.shape, 2), np.nan)
    areas_ci = {r: ((np.nan, np.nan), (np.nan, np.nan)) for r in RANKINGS}
    if n_bootstrap:
        ci, areas_ci = _bootstrap(percents, circuit, full, empty, n_bootstrap, seed)
    return FaithfulnessCurve(list(map(float, percents)), counts, torch.tensor(values), torch.tensor(ci), areas,
                             areas_ci, scores.method, getattr(metric, "__name__", "metric"), ablation, len(pairs),
                             float(full.mean()), float(empty.mean()),
                             "all" if spans is None else "spans: " + ", ".join(spans.names), n_bootstrap)


def _check_spans(names: list | None, spans: Spans | None) -> None:
    if names is None and spans is None:
        return
    if names is None or spans is None or list(spans.names) != list(names):
        raise SelectionError(f"these scores have spans {names}; pass the Spans they were computed with "
                             f"(got {None if spans is None else list(spans.names)})")


def _mask(shape: torch.Size, flat: torch.Tensor) -> torch.Tensor:
    keep = torch.zeros(shape.numel(), dtype=torch.bool)
    keep[flat] = True
    return keep.reshape(shape)


def evaluate_circuits(model, graph: Graph, pairs: PromptPairs, metric, masks: Sequence[torch.Tensor], *,
                      ablation: str = "corrupted", batch_size: int | None = None, variants_per_pass: int = 4,
                      buffer_dtype: torch.dtype | None = None, spans: Spans | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``(per-circuit metrics [len(masks), n], clean metric [n])``: each membership mask
    `[n_src, n_dst]` (position-aware: `[n_spans, n_src, n_dst]` with the ``spans`` of
    ``pairs``) run as an edge-patched forward, ``variants_per_pass`` masks per forward."""
    return _evaluate(model, graph, pairs, checked_metric(metric), list(masks), ablation, batch_size,
                     variants_per_pass, buffer_dtype, spans)


def _evaluate(model, graph, pairs, metric, masks, ablation, batch_size, variants_per_pass, buffer_dtype, spans):
    if variants_per_pass < 1:
        raise SelectionError(f"variants_per_pass must be at least 1, got {variants_per_pass}")
    if spans is not None:
        spans.check(pairs.clean)
        spans = spans.rows(shard(len(pairs)))
    n_total, pairs = len(pairs), local_pairs(pairs)
    mean = mean_sources(model, graph, pairs, batch_size, n_total) if ablation == "mean" else None
    out, full = [], []
    with torch.no_grad():
        for rows, chunk in zip(chunk_rows(len(pairs), batch_size), chunks(pairs, batch_size)):
            ablated = mean if mean is not None else ablated_sources(model, graph, chunk.corrupted, ablation)
            at, view = answer_logits_view(metric, chunk)  # answer-only metrics: unembed there alone
            full.append(metric(model(chunk.clean, logits_at=at), view).float().cpu())
            chunk_spans = None if spans is None else spans.rows(rows)
            values = []
            for i in range(0, len(masks), variants_per_pass):
                stack = torch.stack(masks[i:i + variants_per_pass])
                W = pruned_weights(graph, stack.to(model.device), spans=None if spans is None else len(spans))
                logits = patched_logits(model, graph, chunk.clean, ablated, W, buffer_dtype=buffer_dtype,
                                        spans=chunk_spans, logits_at=at)
                values.append(metric(logits, view.tile(len(stack))).float().cpu().reshape(len(stack), -1))
            out.append(torch.cat(values))
    circuits, clean = gathered(torch.cat(out, dim=1).to(model.device)), gathered(torch.cat(full).to(model.device))
    return circuits.cpu().double().numpy(), clean.cpu().double().numpy()


def _areas(percents, values: np.ndarray) -> dict:
    return {r: curve_areas(percents, values[i]) for i, r in enumerate(RANKINGS)}


def _bootstrap(percents, circuit: np.ndarray, full: np.ndarray, empty: np.ndarray, n_bootstrap: int, seed: int):
    """95% percentile intervals of f `[3, levels, 2]` and of each ranking's (CPR, CMD)."""
    rng = np.random.default_rng(seed)
    n = full.shape[0]
    samples = rng.integers(0, n, size=(n_bootstrap, n))
    fs = np.stack([normalized_faithfulness(circuit[..., s], full[s], empty[s]) for s in samples])  # [B, 3, L]
    ci = np.stack([np.nanpercentile(fs, 2.5, axis=0), np.nanpercentile(fs, 97.5, axis=0)], axis=-1)
    areas = np.array([[curve_areas(percents, f[i]) for i in range(len(RANKINGS))] for f in fs])  # [B, 3, 2]
    low, high = np.nanpercentile(areas, 2.5, axis=0), np.nanpercentile(areas, 97.5, axis=0)
    areas_ci = {r: ((float(low[i, 0]), float(high[i, 0])), (float(low[i, 1]), float(high[i, 1])))
                for i, r in enumerate(RANKINGS)}
    return ci, areas_ci
