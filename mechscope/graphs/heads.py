"""Attention-head loadings of attribution-graph edges: each edge split exactly across the
attention heads that carry it, plus a remainder.

An edge's source writes a vector into the residual stream at its position ``p``; in the
frozen replacement model every path from there to the target leaves position ``p``'s residual
stream once, either through some attention layer's value input at ``p`` (patterns are frozen,
so queries and keys carry nothing) or not at all (the target reads ``p`` itself, directly or
through transcoder skip connections). Grouping the paths by that exit gives an exact split:
``edge = sum over (layer, kv_head) of loading + remainder``, where ``loading[layer, kv_head]`` is
the source's vector dotted with the target's gradient at that layer's per-head value input
at ``p`` (its gradient at that head's ``attn.v`` carried back through the frozen pre-norm and
the value projection to ``resid_pre``). Under grouped-query attention a value belongs to a KV
head, so the loadings are per KV head (the query heads of a group share it).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..errors import SelectionError
from ..models.hooked import HookedModel
from ..result import Result
from ..viz import figures
from .attribution import _clean_pass, _Tracer
from .result import AttributionGraph
from .transcoders import TranscoderSet


@dataclass
class HeadLoadings(Result):
    """``targets`` / ``sources`` `[n_edges]` node indices of the graph, ``names`` their
    ``"target <- source"`` labels, ``weights`` `[n_edges]` the edges, ``loadings`` `[n_edges,
    n_layers, heads]` (KV heads, or query heads when ``per_query_head``), ``remainder``
    `[n_edges]` (the part through no attention head)."""

    targets: torch.Tensor
    sources: torch.Tensor
    names: list[str]
    weights: torch.Tensor
    loadings: torch.Tensor
    remainder: torch.Tensor
    per_query_head: bool = False

    _value = "loading"
    _signed = True

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (edge, layer, head) with a nonzero loading: edge, layer, head (a KV head,
        or a query head when ``per_query_head``), loading, weight (the whole edge's)."""
        edge, layer, head = (self.loadings != 0).nonzero(as_tuple=True)
        return pd.DataFrame({"edge": [self.names[i] for i in edge.tolist()], "layer": layer.numpy(),
                             "head": head.numpy(), "loading": self.loadings[edge, layer, head].double().numpy(),
                             "weight": self.weights[edge].double().numpy()})

    def plot(self, value: str | None = None, **selection):
        """Heatmap over (layer, head) of the summed loading of the selected edges."""
        column = self.plot_column(value)
        data = self.plot_data(value, **selection)
        grid = data.groupby(["layer", "head"])[column].sum().unstack("head")
        prefix, axis = ("H", "query head") if self.per_query_head else ("kv", "KV head")
        return figures.heatmap(grid.to_numpy(), x=[f"{prefix}{h}" for h in grid.columns],
                               y=[f"L{l}" for l in grid.index], signed=True,
                               title=f"edge weight through each attention head ({column})", z_label=column,
                               x_label=axis, y_label="layer")

    def plot_data(self, value: str | None = None, **selection) -> pd.DataFrame:
        column = self.plot_column(value)
        frame = self.select(**selection)
        if not len(frame):
            raise SelectionError(f"the selection {selection} matches no loading")
        return frame.groupby(["layer", "head"], as_index=False)[column].sum()

    def summary(self) -> str:
        through = float(self.loadings.sum() / self.weights.sum()) if float(self.weights.sum()) else float("nan")
        return f"{len(self.names)} edges; {through:.1%} of their summed weight passes through attention heads"


def head_loadings(model: HookedModel, transcoders: TranscoderSet, graph: AttributionGraph,
                  edges: list[tuple[int, int]] | None = None, *, per_query_head: bool = False,
                  batch_size: int = 32) -> HeadLoadings:
    """Split ``edges`` (``(target, source)`` node indices of ``graph``; default every nonzero
    edge of it, so prune first) across attention heads (see the module docstring): per KV head,
    or with ``per_query_head`` per query head (a query head's share of its KV head's loading is
    what flows through its own pattern; the shares of a group sum to the KV head's loading).
    ``graph`` must be of ``transcoders`` on its prompt, with token logits."""
    tokens = graph.tokens[None].to(model.device)
    if edges is None:
        found = (graph.adjacency != 0).nonzero()
        edges = [(int(t), int(s)) for t, s in found.tolist()]
    if not edges:
        raise SelectionError("no edges to split: the graph has none (or pass edges=[(target, source), ...])")
    layers, _, _, embed = _clean_pass(model, transcoders, tokens, skip_first=True)
    tracer = _Tracer(model, transcoders, tokens, layers, embed, batch_size, value_inputs=True)
    w_u = model.weights().W_U.detach().float()
    names = graph.node_names
    by_target: dict[int, list[int]] = {}
    for i, (target, _) in enumerate(edges):
        by_target.setdefault(target, []).append(i)
    n_layers = model.cfg.n_layers
    loadings = torch.zeros(len(edges), n_layers, (tracer.z if per_query_head else tracer.values)[0].shape[2])
    targets = list(by_target)
    for start in range(0, len(targets), batch_size):
        chunk = targets[start : start + batch_size]
        grads = tracer.value_gradients([_direction(graph, transcoders, w_u, t) for t in chunk],
                                       per_query_head=per_query_head)
        for row, target in enumerate(chunk):
            for i in by_target[target]:
                position, vector, first_layer = _source(graph, transcoders, layers, embed, edges[i][1])
                for layer in range(first_layer, n_layers):
                    loadings[i, layer] = grads[layer][row, position] @ vector
    weights = torch.tensor([float(graph.adjacency[t, s]) for t, s in edges])
    return HeadLoadings(targets=torch.tensor([t for t, _ in edges]), sources=torch.tensor([s for _, s in edges]),
                        names=[f"{names[t]} <- {names[s]}" for t, s in edges], weights=weights, loadings=loadings,
                        remainder=weights - loadings.sum((1, 2)), per_query_head=per_query_head)


def _direction(graph: AttributionGraph, transcoders: TranscoderSet, w_u: torch.Tensor, node: int):
    """The tracer target of a feature or logit node."""
    if node < graph.first_error:
        layer, position, latent = graph.feature_index[node].tolist()
        return ("feature", layer, position, transcoders[layer].W_enc[:, latent].detach())
    if node >= graph.first_logit:
        token = int(graph.logit_tokens[node - graph.first_logit])
        if token < 0:
            raise SelectionError("head loadings of a custom logit direction are not supported: use token logits")
        return ("logit", None, graph.n_pos - 1, w_u[:, token] - w_u.mean(1))
    raise SelectionError(f"node {node} is an error or token node: it has no incoming edges")


def _source(graph: AttributionGraph, transcoders: TranscoderSet, layers, embed: torch.Tensor, node: int):
    """``(position, the vector the source writes [d_model], the first layer whose attention reads it)``."""
    if node < graph.first_error:
        layer, position, latent = graph.feature_index[node].tolist()
        vector = graph.activations[node] * transcoders[layer].W_dec[latent].detach().float()
        return position, vector, layer + 1
    if node < graph.first_token:
        layer, position = divmod(node - graph.first_error, graph.n_pos)
        return position, layers[layer].error[position].float(), layer + 1
    if node < graph.first_logit:
        position = node - graph.first_token
        return position, embed[position], 0
    raise SelectionError(f"node {node} is a logit: it is no edge's source")
