"""Result classes of circuit discovery: edge (or node) scores, a chosen circuit, a
faithfulness curve. They follow the result protocol (`mechscope.result`) and hold no model."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import SelectionError
from ..result import Result
from ..viz import figures
from . import plot as circuit_plot
from . import selection
from .graph import Graph


def edge_frame(graph: Graph, scores: torch.Tensor, keep: torch.Tensor, spans: list | None = None) -> pd.DataFrame:
    """One row per edge where ``keep`` `[n_src, n_dst]` holds: names, layers, q/k/v, score.
    Position-aware (``spans`` names, ``keep`` / ``scores`` `[n_spans, n_src, n_dst]`): a row per
    (span, edge) with a ``span`` column and edge names ``"src->dst@span"``."""
    if spans is None:
        span, (src, dst) = None, keep.nonzero(as_tuple=True)
    else:
        span, src, dst = keep.nonzero(as_tuple=True)
    sources, dests = graph.sources, graph.destinations
    s, d = src.tolist(), dst.tolist()
    suffix = [""] * len(s) if span is None else [f"@{spans[k]}" for k in span.tolist()]
    frame = {
        "edge": [f"{graph.src_names[i]}->{graph.dst_names[j]}{x}" for i, j, x in zip(s, d, suffix)],
        "src": [graph.src_names[i] for i in s],
        "dst": [graph.dst_names[j] for j in d],
        "src_layer": [sources[i].layer for i in s],
        "dst_layer": [dests[j].layer for j in d],
        "qkv": [dests[j].qkv or "" for j in d],
        "score": (scores[src, dst] if span is None else scores[span, src, dst]).double().numpy(),
    }
    if span is not None:
        frame = {"span": [spans[k] for k in span.tolist()], **frame}
    return pd.DataFrame(frame)


def node_frame(graph: Graph, scores: torch.Tensor, keep: torch.Tensor) -> pd.DataFrame:
    idx = keep.nonzero()[:, 0].tolist()
    return pd.DataFrame({
        "node": [graph.src_names[i] for i in idx],
        "layer": [graph.sources[i].layer for i in idx],
        "head": [-1 if graph.sources[i].head is None else graph.sources[i].head for i in idx],
        "score": scores[idx].double().numpy(),
    })


@functools.lru_cache(maxsize=16)
def _graph(cfg_items: tuple, level: str) -> Graph:
    return Graph(dict(cfg_items), level)


class _GraphTables:
    """Shared by scores and circuits (a mixin, not a result): the graph, the table, the plots."""

    _value = "score"
    _signed = True

    @property
    def graph(self) -> Graph:
        return _graph(tuple(sorted(self.cfg.items())), self.level)

    def _keep(self) -> torch.Tensor:
        raise NotImplementedError

    def _real(self) -> torch.Tensor:
        """The real edges, `[n_src, n_dst]` (or `[n_spans, n_src, n_dst]` position-aware)."""
        real = self.graph.real
        return real if self.spans is None else real[None].expand(len(self.spans), -1, -1).clone()

    def _frame(self) -> pd.DataFrame:
        graph = self.graph
        if self.level == "node":
            return node_frame(graph, self.scores, self._keep())
        return edge_frame(graph, self.scores, self._keep(), self.spans)

    def _plot(self, value: str | None = None, *, kind: str = "scores", top: int = 200, **selection):
        """``kind="scores"``: every selected edge's score (a source x destination heatmap; a bar
        per node at node level). ``kind="graph"``: the circuit drawn as heads by layer, edge
        width by |score|, hover for names and values (the ``top`` strongest selected edges)."""
        frame = self.plot_data(value, **selection)
        column = self.plot_column(value)
        if kind == "graph":
            if self.spans is not None:  # one line per edge: its largest |value| over the spans
                frame = frame.loc[frame[column].abs().groupby([frame["src"], frame["dst"]]).idxmax()]
            return circuit_plot.circuit_figure(self.graph, frame, column, top=top, title=self.summary())
        if kind != "scores":
            raise SelectionError(f"kind must be 'scores' or 'graph', got {kind!r}")
        if self.level == "node":
            return figures.bar(frame["node"], frame[column], title=self.summary(), x_label="node",
                               y_label=column, signed=True)
        if self.spans is not None:  # rows: sources at each span
            frame = frame.assign(src=frame["src"] + "@" + frame["span"])
        srcs = list(dict.fromkeys(frame["src"]))
        dsts = list(dict.fromkeys(frame["dst"]))
        row, col = {s: i for i, s in enumerate(srcs)}, {d: j for j, d in enumerate(dsts)}
        z = np.full((len(srcs), len(dsts)), np.nan)
        z[[row[s] for s in frame["src"]], [col[d] for d in frame["dst"]]] = frame[column].to_numpy(float)
        return figures.heatmap(z, dsts, srcs, title=self.summary(), signed=True,
                               x_label="destination", y_label="source", z_label=column)


def _check_span_axis(value: torch.Tensor, spans: list | None, what: str) -> None:
    if spans is not None and (value.ndim != 3 or value.shape[0] != len(spans)):
        raise SelectionError(f"position-aware {what} are [n_spans, n_src, n_dst] with n_spans = {len(spans)}, "
                             f"got {tuple(value.shape)}")


@dataclass
class CircuitScores(_GraphTables, Result):
    """Scores of every real edge (``scores`` `[n_src, n_dst]`) or source node (`[n_src]`) of a
    model's graph (``cfg``: see `Graph`), summed over ``n_prompts`` prompts: the first-order
    estimate of metric(edge ablated) - metric(clean) for EAP-type ``method``s
    (``score_kind="effect"``), or learned mask logits, larger = keep, from edge pruning
    (``score_kind="keep"``: every selection then ranks by the score itself, whatever
    ``absolute`` says). ``clean_metric`` and ``corrupted_metric`` are the runs' mean metrics.

    Protocol: ``to_dataframe()`` a row per real edge (edge, src, dst, layers, qkv, score) or node;
    ``top(n)`` ranks by |score|; ``plot()`` a source x destination heatmap, ``plot(kind="graph")``
    the strongest edges as a graph. Circuits: `top_n`, `threshold`, `greedy`."""

    cfg: dict
    level: str
    scores: torch.Tensor
    method: str
    metric: str
    ablation: str
    steps: int = 1
    n_prompts: int = 0
    clean_metric: float = math.nan
    corrupted_metric: float = math.nan
    score_kind: str = "effect"
    spans: list | None = None

    SCORE_KINDS = ("effect", "keep")

    def __post_init__(self) -> None:
        if self.score_kind not in self.SCORE_KINDS:
            raise SelectionError(f"score_kind must be one of {self.SCORE_KINDS}, got {self.score_kind!r}")
        self._signed = self.score_kind == "effect"  # learned logits rank largest first in top()
        _check_span_axis(self.scores, self.spans, "scores")

    def to_dataframe(self) -> pd.DataFrame:
        return self._frame()

    def plot(self, value: str | None = None, *, kind: str = "scores", top: int = 200, **selection):
        return self._plot(value, kind=kind, top=top, **selection)

    plot.__doc__ = _GraphTables._plot.__doc__

    def _keep(self) -> torch.Tensor:
        return self._real() if self.level == "edge" else torch.ones(self.graph.n_src, dtype=torch.bool)

    def summary(self) -> str:
        g = self.graph
        what = f"{g.n_edges} edges" if self.level == "edge" else f"{g.n_src} nodes"
        if self.spans is not None:
            what += f" x {len(self.spans)} spans"
        steps = f", {self.steps} steps" if self.steps > 1 else ""
        return f"{self.method} scores of {what} ({self.metric}, {self.ablation} ablation{steps}; {self.n_prompts} prompts)"

    # -- choosing a circuit ---------------------------------------------------------------
    # absolute=True ranks by |score|; absolute=False by importance: -score for a metric where
    # higher is better (the edges whose ablation lowers it most first), score for a loss.
    # Learned keep logits rank by themselves.
    def _ranked(self, absolute: bool, higher_is_better: bool) -> torch.Tensor:
        if self.score_kind == "keep":
            return self.scores
        return self.scores if absolute or not higher_is_better else -self.scores

    def importance(self, *, higher_is_better: bool = True) -> torch.Tensor:
        """Scores oriented so that larger = more important (`[n_src, n_dst]` or `[n_src]`)."""
        return self._ranked(False, higher_is_better)

    def _absolute(self, absolute: bool) -> bool:
        return absolute and self.score_kind == "effect"

    def top_n(self, n: int, *, absolute: bool = True, higher_is_better: bool = True, prune: bool = False) -> Circuit:
        """The ``n`` edges (or nodes) with the largest |score| (or importance, ``absolute=False``)."""
        ranked, absolute = self._ranked(absolute, higher_is_better), self._absolute(absolute)
        if self.level == "node":
            return self._node_circuit(n, ranked, absolute, f"top {n} nodes")
        return self._circuit(selection.top_n(self.graph, ranked, n, absolute=absolute), prune, f"top {n} edges")

    def threshold(self, tau: float, *, absolute: bool = True, higher_is_better: bool = True,
                  prune: bool | None = None) -> Circuit:
        """The edges whose |score| (or importance, ``absolute=False``) is at least ``tau``
        (``prune``: drop dangling nodes; default yes, except for position-aware scores)."""
        self._edge_level("threshold")
        ranked, absolute = self._ranked(absolute, higher_is_better), self._absolute(absolute)
        keep = selection.threshold(self.graph, ranked, tau, absolute=absolute)
        return self._circuit(keep, prune, f"|score| >= {tau:g}" if absolute else f"importance >= {tau:g}")

    def greedy(self, n: int, *, absolute: bool = True, higher_is_better: bool = True, prune: bool = True) -> Circuit:
        """``n`` edges chosen from the logits backward (every one on a path to the logits)."""
        self._edge_level("greedy")
        self._no_spans("greedy selection")
        ranked, absolute = self._ranked(absolute, higher_is_better), self._absolute(absolute)
        keep = selection.greedy(self.graph, ranked, n, absolute=absolute)
        return self._circuit(keep, prune, f"greedy {n} edges")

    def _edge_level(self, what: str) -> None:
        if self.level != "edge":
            raise SelectionError(f"{what} selection needs edge scores; these are node scores (use top_n)")

    def _no_spans(self, what: str) -> None:
        if self.spans is not None:
            raise SelectionError(f"{what} follows paths through the graph, which position-aware circuits leave "
                                 "across positions inside attention; use top_n or threshold (prune=False)")

    def _circuit(self, keep: torch.Tensor, prune: bool | None, how: str) -> Circuit:
        graph = self.graph
        if prune is None:
            prune = self.spans is None
        if prune:
            self._no_spans("pruning dangling nodes")
            keep = selection.prune(graph, keep)
        return Circuit(dict(self.cfg), self.scores.clone(), keep, selection.nodes_of(graph, keep), self.method,
                       self.ablation, how, self.spans)

    def _node_circuit(self, n: int, ranked: torch.Tensor, absolute: bool, how: str) -> Circuit:
        graph = self.graph
        if not 0 <= n <= graph.n_src:
            raise SelectionError(f"n must be in [0, {graph.n_src}] (the nodes), got {n}")
        ranked = torch.nan_to_num((ranked.abs() if absolute else ranked).float(), nan=-torch.inf)
        nodes = torch.zeros(graph.n_src, dtype=torch.bool)
        nodes[torch.sort(ranked, descending=True, stable=True).indices[:n]] = True
        dst_alive = (graph.owner & nodes[:, None]).any(0)
        dst_alive[-1] = True
        keep = graph.real & nodes[:, None] & dst_alive[None, :]
        edge_scores = torch.where(keep, self.scores[:, None].expand_as(keep), torch.zeros(()))
        return Circuit(dict(self.cfg), edge_scores, keep, nodes, self.method, self.ablation, how)


@dataclass
class Circuit(_GraphTables, Result):
    """A circuit: kept edges ``in_graph`` `[n_src, n_dst]` (bool) with their ``scores``, the
    nodes on them ``nodes_in_graph`` `[n_src]`, and how it was chosen (``selection``).
    Position-aware (``spans`` names): ``in_graph`` and ``scores`` `[n_spans, n_src, n_dst]`.

    Protocol: ``to_dataframe()`` a row per kept edge; ``plot(kind="graph")`` the circuit;
    exports: `mechscope.circuits.export` (EAP-IG JSON / PT, Graphviz DOT)."""

    cfg: dict
    scores: torch.Tensor
    in_graph: torch.Tensor
    nodes_in_graph: torch.Tensor
    method: str = ""
    ablation: str = "corrupted"
    selection: str = ""
    spans: list | None = None

    level = "edge"  # a circuit is a set of edges (node-level selections keep the edges among their nodes)

    def __post_init__(self) -> None:
        _check_span_axis(self.in_graph, self.spans, "in_graph")

    def to_dataframe(self) -> pd.DataFrame:
        return self._frame()

    def plot(self, value: str | None = None, *, kind: str = "scores", top: int = 200, **selection):
        return self._plot(value, kind=kind, top=top, **selection)

    plot.__doc__ = _GraphTables._plot.__doc__

    def _keep(self) -> torch.Tensor:
        return self.in_graph

    @property
    def n_edges(self) -> int:
        return int(self.in_graph.sum())

    def summary(self) -> str:
        return (f"circuit of {self.n_edges} edges, {int(self.nodes_in_graph.sum())} nodes "
                f"({self.selection or 'chosen'}{', ' + self.method if self.method else ''})")

    def heads(self) -> list[str]:
        """The attention heads in the circuit (``"a3.h5"``), in forward order."""
        return [n for n, on in zip(self.graph.src_names, self.nodes_in_graph.tolist()) if on and n.startswith("a")]


@dataclass
class FaithfulnessCurve(Result):
    """Faithfulness f(C) = (m(C) - m(empty)) / (m(full) - m(empty)) of circuits of the top
    ``percents`` % of edges (MIB circuit track), for three rankings: ``"signed"`` (by score,
    whose area is the CPR), ``"absolute"`` (by |score|, whose area under |1 - f| is the CMD) and
    ``"random"`` (a random order: the baseline). ``values`` `[3, n_levels]`; ``ci``
    `[3, n_levels, 2]` bootstrap 95% intervals over prompts; ``areas`` / ``areas_ci``: CPR and
    CMD of each ranking and their intervals (`table`).

    Protocol: ``to_dataframe()`` a row per (ranking, percent); ``plot()`` the curves."""

    percents: list
    n_edges: list
    values: torch.Tensor
    ci: torch.Tensor
    areas: dict
    areas_ci: dict
    method: str
    metric: str
    ablation: str
    n_prompts: int
    full_metric: float
    empty_metric: float
    positions: str = "all"
    n_bootstrap: int = 0

    _value = "faithfulness"
    _signed = False
    RANKINGS = ("signed", "absolute", "random")

    def to_dataframe(self) -> pd.DataFrame:
        rows = []
        for r, ranking in enumerate(self.RANKINGS):
            for i, percent in enumerate(self.percents):
                rows.append({"ranking": ranking, "percent": float(percent), "n_edges": int(self.n_edges[i]),
                             "faithfulness": float(self.values[r, i]), "ci_low": float(self.ci[r, i, 0]),
                             "ci_high": float(self.ci[r, i, 1])})
        return pd.DataFrame(rows)

    def table(self) -> pd.DataFrame:
        """CPR and CMD of each ranking, with bootstrap intervals."""
        rows = []
        for ranking in self.RANKINGS:
            cpr, cmd = self.areas[ranking]
            (cpr_lo, cpr_hi), (cmd_lo, cmd_hi) = self.areas_ci[ranking]
            rows.append({"ranking": ranking, "CPR": cpr, "CPR_low": cpr_lo, "CPR_high": cpr_hi,
                         "CMD": cmd, "CMD_low": cmd_lo, "CMD_high": cmd_hi})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        cpr, cmd = self.areas["signed"][0], self.areas["absolute"][1]
        return (f"faithfulness of {self.method} circuits ({self.metric}, {self.ablation} ablation, "
                f"{self.n_prompts} prompts): CPR {cpr:.3f}, CMD {cmd:.3f}")

    def plot(self, value: str | None = None, **selection):
        """The curves f over % of edges (log axis), one per ranking, bootstrap intervals as error bars."""
        frame = self.plot_data(value, **selection)
        column = self.plot_column(value)
        import plotly.graph_objects as go

        fig = go.Figure()
        for ranking, part in frame.groupby("ranking", sort=False):
            fig.add_trace(go.Scatter(
                x=part["percent"], y=part[column].to_numpy(float), name=str(ranking), mode="lines+markers",
                error_y={"type": "data", "symmetric": False, "array": (part["ci_high"] - part[column]).to_numpy(),
                         "arrayminus": (part[column] - part["ci_low"]).to_numpy()},
                customdata=part[["n_edges"]].to_numpy(),
                hovertemplate=f"{ranking}<br>%{{x}}% of edges (%{{customdata[0]}})<br>{column}: %{{y:.4g}}<extra></extra>"))
        fig.add_hline(y=1.0, line={"color": "gray", "width": 1, "dash": "dot"})
        fig.update_xaxes(type="log", title_text="% of edges")
        fig.update_yaxes(title_text=column)
        fig.update_layout(title={"text": self.summary(), "x": 0.01, "font": {"size": 14}}, template="plotly_white",
                          height=420)
        return fig
