"""`AttributionGraph`: the nodes and direct-effect adjacency of one prompt's attribution graph
(`graphs.attribution`), following the result protocol (`mechscope.result`); holds no model.

Node order (circuit-tracer's): active features (by layer, position, latent), error nodes
(``layer * n_pos + position``), tokens (position), logits. ``adjacency[target, source]``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..errors import SelectionError
from ..result import Result
from ..viz import figures
from .frontend import write_frontend
from .influence import logit_weights, node_influence, row_normalised
from .pruning import graph_scores, prune_masks


@dataclass
class AttributionGraph(Result):
    """tokens `[p]`, feature_index `[n_f, 3]` (layer, position, latent), activations `[n_f]`,
    logit_tokens / logit_probs `[n_l]` (-1 / NaN for custom directions), adjacency `[n, n]`,
    has_row `[n]` (whose incoming edges were computed), values `[n]` (a feature's
    pre-activation, a logit's demeaned value; 0 elsewhere), bias `[n]` (what constants
    contribute), dropped `[n]` (the summed edges from active features that are not nodes: with
    ``max_features`` only the features whose rows were computed are), so that for every row
    ``value = row.sum() + dropped + bias``; n_active: the prompt's active features in all."""

    tokens: torch.Tensor
    token_texts: list[str]
    n_layers: int
    feature_index: torch.Tensor
    activations: torch.Tensor
    logit_labels: list[str]
    logit_tokens: torch.Tensor
    logit_probs: torch.Tensor
    adjacency: torch.Tensor
    has_row: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor
    dropped: torch.Tensor
    n_active: int
    kept: torch.Tensor | None = None  # [n] bool: the nodes a pruned graph keeps (None: all)

    _value = "influence"
    _signed = False

    # -- node layout ----------------------------------------------------------------------------
    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return len(self.feature_index)

    @property
    def n_nodes(self) -> int:
        return self.adjacency.shape[0]

    @property
    def first_error(self) -> int:
        return self.n_features

    @property
    def first_token(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def first_logit(self) -> int:
        return self.first_token + self.n_pos

    def feature_node(self, layer: int, position: int, latent: int) -> int:
        """The node index of an active feature, or a `SelectionError` when it is not active."""
        match = ((self.feature_index == torch.tensor([layer, position, latent])).all(-1)).nonzero()
        if not len(match):
            raise SelectionError(f"feature {latent} of layer {layer} is not active at position {position}")
        return int(match[0, 0])

    def error_node(self, layer: int, position: int) -> int:
        return self.first_error + layer * self.n_pos + position

    def token_node(self, position: int) -> int:
        return self.first_token + position

    def logit_node(self, index: int) -> int:
        return self.first_logit + index

    @functools.cached_property
    def _nodes(self) -> pd.DataFrame:
        n_f, n_pos, n_layers = self.n_features, self.n_pos, self.n_layers
        kinds = ["feature"] * n_f + ["error"] * (n_layers * n_pos) + ["token"] * n_pos + ["logit"] * len(self.logit_labels)
        layers = (self.feature_index[:, 0].tolist() + [l for l in range(n_layers) for _ in range(n_pos)]
                  + [-1] * n_pos + [n_layers] * len(self.logit_labels))
        positions = (self.feature_index[:, 1].tolist() + list(range(n_pos)) * n_layers + list(range(n_pos))
                     + [n_pos - 1] * len(self.logit_labels))
        latents = self.feature_index[:, 2].tolist() + [-1] * (len(kinds) - n_f)
        names = ([f"L{l}/{p}/f{f}" for l, p, f in self.feature_index.tolist()]
                 + [f"L{l}/{p}/error" for l in range(n_layers) for p in range(n_pos)]
                 + [f"token {p} {self.token_texts[p]!r}" for p in range(n_pos)]
                 + [f"logit {label!r}" for label in self.logit_labels])
        activation = self.activations.double().tolist() + [math.nan] * (len(kinds) - n_f)
        return pd.DataFrame({"node": names, "kind": kinds, "layer": layers, "pos": positions, "latent": latents,
                             "activation": activation,
                             "value": torch.where(self.has_row, self.values, math.nan).double().numpy()})

    @property
    def node_names(self) -> list[str]:
        """Every node's name, in node order (kept or not): ``L{layer}/{pos}/f{latent}``,
        ``L{layer}/{pos}/error``, ``token {pos} '...'``, ``logit '...'``."""
        return list(self._nodes["node"])

    @functools.cached_property
    def influence(self) -> torch.Tensor:
        """`[n]`: each node's influence on the logits (weighted by their probabilities; equal
        weights for custom directions), summed over all paths of the row-normalised graph."""
        return node_influence(row_normalised(self.adjacency), logit_weights(self.n_nodes, self.logit_probs))

    @property
    def kinds(self) -> torch.Tensor:
        """`[n]`: 0 feature, 1 error, 2 token, 3 logit."""
        sizes = torch.tensor([self.n_features, self.n_layers * self.n_pos, self.n_pos, len(self.logit_labels)])
        return torch.repeat_interleave(torch.arange(4), sizes)

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> AttributionGraph:
        """The graph pruned by cumulative influence (`graphs.pruning`; circuit-tracer's defaults):
        same node layout, ``kept`` marking the nodes left, pruned edges zeroed (their weights
        join ``dropped``, so ``value = row.sum() + dropped + bias`` still holds)."""
        nodes, edges = prune_masks(self.adjacency, self.logit_probs, self.kinds, node_threshold=node_threshold,
                                   edge_threshold=edge_threshold)
        if self.kept is not None:
            nodes = nodes & self.kept
            edges = edges & nodes[:, None] & nodes[None, :]
        adjacency = self.adjacency * edges
        return dataclasses.replace(self, adjacency=adjacency, kept=nodes,
                                   dropped=self.dropped + (self.adjacency - adjacency).sum(-1))

    def save_frontend(self, folder, slug: str, **options) -> Path:
        """Write this graph as the attribution-graphs frontend's JSON (`graphs.frontend`:
        ``<slug>.json`` plus the folder's ``graph-metadata.json``); prune it first to show a
        readable subgraph. Options: ``scan``, ``prompt``, ``labels`` ({(layer, latent): text}),
        ``node_threshold``."""
        return write_frontend(self, folder, slug, **options)

    def scores(self) -> dict[str, float]:
        """Replacement and completeness scores of this graph (`graphs.pruning.graph_scores`)."""
        return graph_scores(self.adjacency, self.logit_probs, self.kinds)

    # -- the protocol --------------------------------------------------------------------------
    def to_dataframe(self) -> pd.DataFrame:
        """One row per node: node, kind (feature / error / token / logit), layer (-1 for tokens,
        n_layers for logits), pos, latent (-1 if not a feature), activation, value, influence."""
        frame = self._nodes.copy()
        frame["influence"] = self.influence.double().numpy()
        return frame if self.kept is None else frame[self.kept.numpy()].reset_index(drop=True)

    def edges(self, *, min_weight: float = 0.0, target: int | None = None) -> pd.DataFrame:
        """One row per nonzero edge (``|weight| > min_weight``; of one ``target`` node if given):
        target, source (node names), target_index, source_index, weight."""
        block = self.adjacency if target is None else self.adjacency[target : target + 1]
        rows, cols = (block.abs() > min_weight).nonzero(as_tuple=True)
        if target is not None:
            rows = rows + target
        names = self._nodes["node"]
        return pd.DataFrame({"target": names.iloc[rows.numpy()].to_numpy(), "source": names.iloc[cols.numpy()].to_numpy(),
                             "target_index": rows.numpy(), "source_index": cols.numpy(),
                             "weight": self.adjacency[rows, cols].double().numpy()})

    def plot_data(self, value: str | None = None, **selection: Any) -> pd.DataFrame:
        """Per (layer, position): the summed ``value`` (default influence) of the selected nodes."""
        column = self.plot_column(value)
        frame = self.select(**selection)
        if column not in frame.columns:
            raise SelectionError(f"AttributionGraph cannot plot {column!r}; columns: {', '.join(frame.columns)}")
        if not len(frame):
            raise SelectionError(f"the selection {selection} matches no node of this AttributionGraph")
        return frame.groupby(["layer", "pos"], as_index=False)[column].sum()

    def plot(self, value: str | None = None, **selection: Any):
        """Heatmap over (layer, position) of the summed influence (or ``value``) of the nodes:
        token embeddings at the bottom row, logits at the top."""
        column = self.plot_column(value)
        data = self.plot_data(value, **selection)
        rows = sorted(data["layer"].unique(), reverse=True)  # logits on top, embeddings at the bottom
        grid = torch.full((len(rows), self.n_pos), math.nan, dtype=torch.float64)
        for layer, pos, v in data[["layer", "pos", column]].itertuples(index=False):
            grid[rows.index(layer), int(pos)] = v
        labels = ["embed" if r == -1 else "logits" if r == self.n_layers else f"L{r}" for r in rows]
        return figures.heatmap(grid.numpy(), x=[f"{p} {t}" for p, t in enumerate(self.token_texts)], y=labels,
                               title=f"attribution graph: {column} by layer and position", z_label=column,
                               x_label="position", y_label="layer")

    def summary(self) -> str:
        top = self.logit_labels[0] if self.logit_labels else "?"
        pruned = "" if self.kept is None else f"pruned to {int(self.kept.sum())} nodes; "
        return (f"{pruned}{self.n_pos} tokens, {self.n_features} feature nodes of {self.n_active} active features, "
                f"{len(self.logit_labels)} logits (top {top!r})")
