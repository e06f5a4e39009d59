"""Edge attribution patching (EAP, Syed et al. 2023) and its integrated-gradients variants
(EAP-IG, Hanna et al. 2024), as schedules over one gradient-times-difference kernel.

For every real edge u -> v:

    score(u -> v) = sum over prompts, positions, d of (a_ablated(u) - a_clean(u)) . d metric / d input(v)

a first-order estimate of metric(clean run with only that edge ablated) - metric(clean run),
summed over prompts (so chunked prompts add up: shard them and sum). The difference
(source-major `[n_src, n * pos * d]`, `Difference`) comes from one ablation forward and the clean
sources; each gradient pass (a forward and an activation-only backward, parameters frozen) adds,
at every destination hook, one matmul ``diff[:prefix] @ grad`` into ``scores[:prefix, dst]``.
EAP records the clean sources in its gradient pass's own forward: 2 forwards + 1 backward.
The methods differ only in their gradient passes (the *schedule*):

- ``"EAP"``: one pass on the clean run.
- ``"EAP-IG-inputs"``: ``steps`` passes with the input embedding (``blocks.0.resid_pre``)
  interpolated from ablated to clean, ``alpha = k / steps``, averaged. ``rule="right"``
  (k = 1..steps, the default: steps=1 is EAP exactly) or ``"left"`` (k = 0..steps-1,
  hannamw/EAP-IG's convention for inputs).
- ``"EAP-IG-activations"``: for each source group (the input, each layer's attention, each MLP)
  ``steps`` passes with that group's output interpolated (k = 1..steps); the edges *out of* the
  group take the gradients of its own passes ((2 n_layers + 1) * steps passes).
- ``"clean-corrupted"``: the mean of a pass on the clean and one on the corrupted prompts.

Node level (``level="node"``): score(u) = (a_ablated(u) - a_clean(u)) . d metric / d a(u), the
gradient taken at the source outputs themselves (node attribution patching); since every
destination downstream reads a(u) with coefficient 1, it equals the row sum of u's edge scores.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..causal.metrics import answer_logits_view, checked_metric, logit_diff
from ..causal.patching import run_and_source
from ..data.tasks import PromptPairs
from ..distributed import shard
from ..errors import SelectionError
from .graph import Graph
from .interventions import ABLATIONS, ablated_sources, source_activations, stack_sources
from .result import CircuitScores
from .sharding import chunk_rows, chunks, local_pairs, mean_sources, summed
from .spans import Spans

METHODS = ("EAP", "EAP-IG-inputs", "EAP-IG-activations", "clean-corrupted")
Metric = Callable[[torch.Tensor, PromptPairs], torch.Tensor]


def alphas(steps: int, rule: str = "right") -> list[float]:
    """The interpolation points of an IG schedule (1 = clean, 0 = ablated)."""
    if steps < 1:
        raise SelectionError(f"steps must be at least 1, got {steps}")
    if rule == "right":
        return [k / steps for k in range(1, steps + 1)]
    if rule == "left":
        return [k / steps for k in range(steps)]
    raise SelectionError(f"rule must be 'right' or 'left', got {rule!r}")


def attribute(model, pairs: PromptPairs, metric: Metric = logit_diff, *, method: str = "EAP", steps: int = 5,
              ablation: str = "corrupted", level: str = "edge", batch_size: int | None = None,
              rule: str = "right", spans: Spans | None = None) -> CircuitScores:
    """Scores of every real edge (or source node) of ``model``'s graph on ``pairs``.

    method: one of `METHODS`. ablation: what pruned edges carry ("corrupted": the corrupted
    prompts' activations; "mean": their mean per position over all prompts; "zero").
    batch_size: prompts per pass (scores are sums, so the totals do not depend on it).
    Under ``torchrun`` each rank scores a contiguous share of the prompts and the sums are
    all-reduced: every rank returns the scores of all of them.
    spans: a `Spans` schema of ``pairs`` for position-aware edge scores `[n_spans, n_src, n_dst]`
      (each span's positions summed; the spans' scores add up to the plain ones).
    Returns `CircuitScores` (``scores`` `[n_src, n_dst]`, or `[n_src]` at node level).
    """
    if method not in METHODS:
        raise SelectionError(f"method must be one of {METHODS}, got {method!r}")
    if ablation not in ABLATIONS:
        raise SelectionError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    metric = checked_metric(metric)
    run_and_source(pairs, "noise", model)  # checks pairs and answers
    graph = Graph.from_model(model, level)
    if spans is not None:
        if level != "edge":
            raise SelectionError("position-aware scores are edge scores; use level='edge' with spans")
        spans.check(pairs.clean)
    scores = graph.empty_scores().to(model.device)
    if spans is not None:
        scores = scores[None].repeat(len(spans), 1, 1)
    n_total = len(pairs)
    rows = shard(n_total)
    pairs = local_pairs(pairs)
    spans = None if spans is None else spans.rows(rows)
    mean = mean_sources(model, graph, pairs, batch_size, n_total) if ablation == "mean" else None
    clean_total = corrupted_total = 0.0
    for where, chunk in zip(chunk_rows(len(pairs), batch_size), chunks(pairs, batch_size)):
        layout = None if spans is None else SpanLayout(spans.rows(where))
        at, view = answer_logits_view(metric, chunk)  # answer-only metrics: unembed there alone
        if ablation == "corrupted":
            corrupted_logits, ablated = source_activations(model, graph, chunk.corrupted, logits_at=at)
        else:
            with torch.no_grad():
                corrupted_logits = model(chunk.corrupted, logits_at=at)
            ablated = mean if ablation == "mean" else ablated_sources(model, graph, chunk.corrupted, "zero")
        corrupted_total += float(metric(corrupted_logits, view).float().sum())
        if method == "EAP":  # the clean sources are recorded in the gradient pass's own forward
            diff = Difference(graph, ablated, layout=layout)
            logits = _gradient_pass(model, graph, chunk.clean, view, metric, diff, scores, 1.0, diff.recorders(), None,
                                    at)
            clean_total += float(metric(logits, view).float().sum())
            continue
        clean_logits, clean = source_activations(model, graph, chunk.clean, logits_at=at)
        clean_total += float(metric(clean_logits, view).float().sum())
        diff = Difference(graph, ablated, clean, layout=layout)
        for tokens, weight, hooks, rows in _schedule(graph, chunk, method, steps, rule, clean, ablated):
            _gradient_pass(model, graph, tokens, view, metric, diff, scores, weight, hooks, rows, at)
    totals = torch.tensor([clean_total, corrupted_total], dtype=torch.float64, device=model.device)
    summed(scores, totals)
    clean_mean, corrupted_mean = (totals / n_total).tolist()
    return CircuitScores(graph.cfg, level, scores.float().cpu(), method, getattr(metric, "__name__", "metric"),
                         ablation, steps if "IG" in method else 1, n_total, clean_mean, corrupted_mean,
                         spans=None if spans is None else list(spans.names))


def eap(model, pairs: PromptPairs, metric: Metric = logit_diff, **options) -> CircuitScores:
    """`attribute` with ``method="EAP"``."""
    return attribute(model, pairs, metric, method="EAP", **options)


def eap_ig(model, pairs: PromptPairs, metric: Metric = logit_diff, *, steps: int = 5, inputs: bool = True,
           **options) -> CircuitScores:
    """`attribute` with ``method="EAP-IG-inputs"`` (or ``-activations`` with ``inputs=False``)."""
    return attribute(model, pairs, metric, method="EAP-IG-inputs" if inputs else "EAP-IG-activations",
                     steps=steps, **options)


class SpanLayout:
    """Tokens sorted by span for position-aware kernels: ``order`` `[n * pos]` (flat token
    indices) and each span's ``[start, end)`` in it, so a span is a contiguous column block."""

    def __init__(self, spans: Spans):
        self.order, self.bounds = spans.order()

    def sort(self, tokens_first: torch.Tensor) -> torch.Tensor:
        """``tokens_first`` `[n * pos, ...]` in span order."""
        return tokens_first.index_select(0, self.order.to(tokens_first.device))


class Difference:
    """ablated - clean source outputs, source-major `[n_src, n * pos * d]` (``value``; tokens
    in span order with a ``layout``): from the clean sources given, or (EAP) assembled from
    those the gradient pass's forward records (`recorders`), so no separate clean forward is run."""

    def __init__(self, graph: Graph, ablated: torch.Tensor, clean: torch.Tensor | None = None, *,
                 layout: SpanLayout | None = None):
        self.graph, self.ablated, self.layout = graph, ablated, layout
        self.parts: dict[str, torch.Tensor] = {}
        self._value = None if clean is None else self._build(clean)

    def _build(self, clean: torch.Tensor) -> torch.Tensor:
        diff = self.ablated.to(clean.dtype) - clean  # [n, pos, n_src, d]
        if self.layout is not None:
            diff = self.layout.sort(diff.flatten(0, 1))[None]  # [1, n * pos (span order), n_src, d]
        return diff.permute(2, 0, 1, 3).reshape(self.graph.n_src, -1).contiguous()

    def recorders(self) -> dict[str, Callable]:
        def record(hook: str) -> Callable:
            return lambda x, ctx: self.parts.__setitem__(hook, x.detach())

        return {hook: record(hook) for hook in self.graph.source_groups()}

    @property
    def value(self) -> torch.Tensor:
        if self._value is None:
            self._value = self._build(stack_sources(self.graph, self.parts))
            self.parts = {}
        return self._value


def _schedule(graph: Graph, pairs: PromptPairs, method: str, steps: int, rule: str, clean: torch.Tensor,
              ablated: torch.Tensor):
    """``(tokens, weight, forward hooks, source rows or None)`` of each gradient pass."""
    if method == "EAP":
        yield pairs.clean, 1.0, {}, None
    elif method == "clean-corrupted":
        yield pairs.clean, 0.5, {}, None
        yield pairs.corrupted, 0.5, {}, None
    elif method == "EAP-IG-inputs":
        start, end = ablated[:, :, 0].to(clean.dtype), clean[:, :, 0]
        for alpha in alphas(steps, rule):
            yield pairs.clean, 1.0 / steps, {"blocks.0.resid_pre": _set_to(start + alpha * (end - start))}, None
    else:  # EAP-IG-activations: one group of sources at a time
        for hook, rows in _source_blocks(graph):
            shift = (ablated.to(clean.dtype) - clean)[:, :, rows].sum(2)  # ablated - clean over the group: [n, pos, d]
            for alpha in alphas(steps, "right"):
                yield pairs.clean, 1.0 / steps, {hook: _shifted(shift, 1.0 - alpha)}, rows


def _source_blocks(graph: Graph) -> list[tuple[str, slice]]:
    """Groups interpolated together by EAP-IG-activations: (hook writing them, source rows)."""
    out = [("blocks.0.resid_pre", slice(0, 1))]
    for l in range(graph.n_layers):
        first = graph.src_index(l, 0)
        out.append((f"blocks.{l}.attn.out", slice(first, first + graph.n_heads)))
        out.append((f"blocks.{l}.mlp.out", slice(first + graph.n_heads, first + graph.n_heads + 1)))
    return out


def _set_to(value: torch.Tensor) -> Callable:
    return lambda x, ctx: value.to(x.device, x.dtype).expand_as(x).clone()


def _shifted(shift: torch.Tensor, by: float) -> Callable:
    return lambda x, ctx: x + by * shift.to(x.device, x.dtype)


def _gradient_pass(model, graph: Graph, tokens: torch.Tensor, pairs: PromptPairs, metric: Metric,
                   diff: Difference, scores: torch.Tensor, weight: float, forward: dict,
                   rows: slice | None, logits_at: torch.Tensor | None = None) -> torch.Tensor:
    """One forward + backward of ``metric`` summed over prompts, adding ``weight`` times the
    kernel at every destination (edge level) or source (node level) into ``scores``. Returns
    the pass's logits (detached)."""
    forward = dict(forward)
    if graph.level == "edge":
        backward = {hook: _edge_kernel(graph, idx, diff, scores, weight, rows)
                    for hook, idx in graph.hook_groups().items()}
    else:
        backward = {hook: _node_kernel(idx, diff, scores, weight, rows) for hook, idx in graph.source_groups().items()}
        for hook in backward:  # heads' shares must be on the path for their gradients to reach them
            if hook.endswith("attn.head_out"):
                forward[hook] = _chain(forward.get(hook), lambda x, ctx: x.clone())
    with torch.enable_grad(), model.frozen(), model.hooks(forward, backward=backward):
        logits = model(tokens, logits_at=logits_at)
        metric(logits, pairs).float().sum().backward()
    return logits.detach()


def _chain(first: Callable | None, second: Callable) -> Callable:
    if first is None:
        return second

    def both(x: torch.Tensor, ctx) -> torch.Tensor:
        y = first(x, ctx)
        return second(x if y is None else y, ctx)

    return both


def _edge_kernel(graph: Graph, idx: list[int], diff: Difference, scores: torch.Tensor, weight: float,
                 rows: slice | None) -> Callable:
    prefix = graph.destinations[idx[0]].prefix
    span = slice(idx[0], idx[-1] + 1)
    src = slice(0, prefix) if rows is None else slice(rows.start, min(rows.stop, prefix))
    layout = diff.layout

    def kernel(grad: torch.Tensor, ctx) -> None:
        if src.stop <= src.start:
            return
        g = grad if grad.ndim == 4 else grad[:, :, None]
        value = diff.value[src]
        g = g.to(value.device)  # a device_map model: the (small) gradient goes to the differences
        if layout is None:
            g = g.permute(0, 1, 3, 2).reshape(-1, g.shape[2])  # [n*pos*d, j]
            scores[src, span] += weight * (value.to(g.dtype) @ g).to(scores.device, scores.dtype)
            return
        g = layout.sort(g.flatten(0, 1)).transpose(1, 2)  # [n*pos (span order), d, j]
        d = g.shape[1]
        g = g.reshape(-1, g.shape[2])
        for s, (a, b) in enumerate(layout.bounds):
            if b > a:
                part = value[:, a * d : b * d].to(g.dtype) @ g[a * d : b * d]
                scores[s, src, span] += weight * part.to(scores.device, scores.dtype)
        return

    return kernel


def _node_kernel(idx: list[int], diff: Difference, scores: torch.Tensor, weight: float,
                 rows: slice | None) -> Callable:
    index = torch.tensor(idx)
    keep = index if rows is None else index[(index >= rows.start) & (index < rows.stop)]

    def kernel(grad: torch.Tensor, ctx) -> None:
        if not len(keep):
            return
        g = grad if grad.ndim == 4 else grad[:, :, None]
        g = g[:, :, (keep - idx[0]).to(g.device)].permute(2, 0, 1, 3).reshape(len(keep), -1)  # [s, n*pos*d]
        value = diff.value
        part = (value[keep.to(value.device)].to(g.dtype) * g.to(value.device)).sum(-1)
        scores[keep.to(scores.device)] += weight * part.to(scores.device, scores.dtype)
        return

    return kernel
