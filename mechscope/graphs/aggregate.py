"""Attribution graphs of several prompts of one template, aggregated: how often each edge
appears and how strong it is on average (the prompts' positions line up, so a node is the
same node in every graph).

    graphs = [ms.attribution_graph(model, transcoders, p).prune() for p in prompts]
    summary = ms.aggregate_graphs(graphs)
    summary.top(10)                                   # the most frequent edges

A node's key is position-aligned: a feature ``L{layer}/{pos}/f{latent}``, an error node
``L{layer}/{pos}/error``, a token ``token {pos}`` (its text may differ between prompts), a logit
by its rank ``logit #{j}`` (``#0`` is each prompt's top logit, e.g. the right name in IOI).
An edge is present in a graph when its weight there is nonzero (prune the graphs first to
count only the edges they keep).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from ..errors import SelectionError
from ..result import Result
from ..viz import figures
from .result import AttributionGraph


@dataclass
class GraphAggregate(Result):
    """One entry per edge seen in any graph: ``targets`` / ``sources`` node keys, ``counts``
    `[n_edges]` (graphs it is present in), ``weight_sums`` `[n_edges]`; ``n_graphs``."""

    targets: list[str]
    sources: list[str]
    counts: torch.Tensor
    weight_sums: torch.Tensor
    n_graphs: int

    _value = "frequency"
    _signed = False

    def to_dataframe(self) -> pd.DataFrame:
        """One row per edge: target, source, frequency (share of graphs it is in), mean_weight
        (over all graphs, 0 where absent), mean_when_present."""
        counts, sums = self.counts.double(), self.weight_sums.double()
        return pd.DataFrame({"target": self.targets, "source": self.sources,
                             "frequency": (counts / self.n_graphs).numpy(), "mean_weight": (sums / self.n_graphs).numpy(),
                             "mean_when_present": (sums / counts.clamp_min(1)).numpy()})

    def plot(self, value: str | None = None, **selection):
        """Bar chart of the selected edges' ``value`` (default frequency), largest first."""
        column = self.plot_column(value)
        data = self.plot_data(value, **selection).sort_values(column, ascending=False, kind="stable")
        return figures.bar([f"{s} -> {t}" for s, t in zip(data["source"], data["target"])], data[column].to_numpy(),
                           title=f"edges over {self.n_graphs} graphs: {column}", x_label="edge", y_label=column)

    def summary(self) -> str:
        always = int((self.counts == self.n_graphs).sum())
        return f"{len(self.targets)} edges over {self.n_graphs} graphs, {always} in every one"


def node_keys(graph: AttributionGraph) -> list[str]:
    """Position-aligned keys of every node of ``graph`` (see the module docstring)."""
    keys = graph.node_names
    for position in range(graph.n_pos):
        keys[graph.token_node(position)] = f"token {position}"
    for j in range(len(graph.logit_labels)):
        keys[graph.logit_node(j)] = f"logit #{j}"
    return keys


def aggregate_graphs(graphs: Sequence[AttributionGraph]) -> GraphAggregate:
    """Edge frequency and mean weight over ``graphs`` (prompts of one template, equal length)."""
    if not graphs:
        raise SelectionError("aggregate_graphs needs at least one graph")
    lengths = {g.n_pos for g in graphs}
    if len(lengths) > 1:
        raise SelectionError(f"the graphs' prompts have {sorted(lengths)} tokens: aggregate prompts of one template "
                             "(equal length, positions aligned)")
    counts: dict[tuple[str, str], int] = defaultdict(int)
    sums: dict[tuple[str, str], float] = defaultdict(float)
    for graph in graphs:
        keys = node_keys(graph)
        targets, sources = (graph.adjacency != 0).nonzero(as_tuple=True)
        weights = graph.adjacency[targets, sources].tolist()
        for t, s, w in zip(targets.tolist(), sources.tolist(), weights):
            counts[(keys[t], keys[s])] += 1
            sums[(keys[t], keys[s])] += w
    edges = sorted(counts, key=lambda e: (-counts[e], e))
    return GraphAggregate(targets=[t for t, _ in edges], sources=[s for _, s in edges],
                          counts=torch.tensor([counts[e] for e in edges]),
                          weight_sums=torch.tensor([sums[e] for e in edges], dtype=torch.float64), n_graphs=len(graphs))
