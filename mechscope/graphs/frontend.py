"""An attribution graph as the JSON the attribution-graphs frontend reads (the interactive
viewer of Ameisen et al. 2025 that circuit-tracer serves): ``<slug>.json`` with ``metadata``,
``qParams``, ``nodes`` and ``links``, and the folder's ``graph-metadata.json`` index.

Node ids follow the frontend's conventions: features ``"{layer}_{latent}_{pos}"``, error
nodes ``"0_{layer}_{pos}"``, tokens ``"E_{token id}_{pos}"``, logits ``"{n_layers + 1}_{token
id}_{pos}"``; a node's ``influence`` is its cumulative influence (the share of the total
carried by the nodes at least as influential, what the viewer's node threshold compares).
Only the graph's kept nodes (all, unpruned) with an edge, and every token and logit, are
written; ``labels`` (``{(layer, latent): text}``) fill the features' ``clerp``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .result import AttributionGraph

SCHEMA_VERSION = 1


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _shown(text: str) -> str:
    return text.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def cumulative_influence(influence: torch.Tensor) -> torch.Tensor:
    """`[n]`: for each node, the share of the total influence carried by the nodes whose
    influence is at least its own (1.0 for the least influential)."""
    order = torch.argsort(influence, descending=True, stable=True)
    shares = influence[order].cumsum(0) / influence.sum().clamp_min(torch.finfo(influence.dtype).tiny)
    out = torch.empty_like(influence)
    out[order] = shares
    return out


def frontend_json(graph: AttributionGraph, slug: str, *, scan: str = "mechscope", prompt: str | None = None,
                  labels: dict[tuple[int, int], str] | None = None, node_threshold: float | None = 0.8) -> dict:
    """The frontend's graph document for ``graph`` (see the module docstring)."""
    labels = labels or {}
    kept = graph.kept if graph.kept is not None else torch.ones(graph.n_nodes, dtype=torch.bool)
    cumulative = cumulative_influence(graph.influence)
    n_layers, n_pos = graph.n_layers, graph.n_pos
    nodes: dict[int, dict] = {}
    for index in kept.nonzero()[:, 0].tolist():
        share = float(cumulative[index])
        if index < graph.first_error:
            layer, pos, latent = graph.feature_index[index].tolist()
            nodes[index] = _node(f"{layer}_{latent}_{pos}", _cantor(layer, latent), str(layer), pos,
                                 "cross layer transcoder", f"{layer}_{latent}-0", share,
                                 activation=float(graph.activations[index]), clerp=labels.get((layer, latent), ""))
        elif index < graph.first_token:
            layer, pos = divmod(index - graph.first_error, n_pos)
            nodes[index] = _node(f"0_{layer}_{pos}", -1, str(layer), pos, "mlp reconstruction error",
                                 f"{layer}_{pos}-0", share)
        elif index < graph.first_logit:
            pos = index - graph.first_token
            token = int(graph.tokens[pos])
            nodes[index] = _node(f"E_{token}_{pos}", pos, "E", pos, "embedding", f"E_{token}-{pos}", share,
                                 clerp=_shown(graph.token_texts[pos]))
        else:
            j = index - graph.first_logit
            token = int(graph.logit_tokens[j])
            vocab = token if token >= 0 else 10**9 + j  # a custom direction gets an id no token has
            prob = float(graph.logit_probs[j]) if not torch.isnan(graph.logit_probs[j]) else 0.0
            nodes[index] = _node(f"{n_layers + 1}_{vocab}_{n_pos - 1}", vocab, str(n_layers + 1), n_pos - 1, "logit",
                                 f"L_{vocab}-{n_pos - 1}", None, token_prob=prob, is_target_logit=j == 0,
                                 clerp=f'Output "{_shown(graph.logit_labels[j])}" (p={prob:.3f})')
    targets, sources = (graph.adjacency != 0).nonzero(as_tuple=True)
    links = [{"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(graph.adjacency[t, s])}
             for t, s in zip(targets.tolist(), sources.tolist()) if s in nodes and t in nodes]
    linked = {link["source"] for link in links} | {link["target"] for link in links}
    shown = [n for n in nodes.values() if n["node_id"] in linked or n["feature_type"] in ("embedding", "logit")]
    tokens = [_shown(t) for t in graph.token_texts]
    return {"metadata": {"slug": slug, "scan": scan, "transcoder_list": [], "prompt_tokens": tokens,
                         "prompt": prompt if prompt is not None else "".join(graph.token_texts),
                         "node_threshold": node_threshold, "schema_version": SCHEMA_VERSION},
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": shown, "links": links}


def _node(node_id: str, feature: int, layer: str, pos: int, kind: str, js_id: str, influence: float | None, *,
          activation: float | None = None, clerp: str = "", token_prob: float = 0.0,
          is_target_logit: bool = False) -> dict:
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos, "feature_type": kind,
            "token_prob": token_prob, "is_target_logit": is_target_logit, "run_idx": 0, "reverse_ctx_idx": 0,
            "jsNodeId": js_id, "clerp": clerp, "influence": influence, "activation": activation}


def write_frontend(graph: AttributionGraph, folder: str | os.PathLike, slug: str, **options) -> Path:
    """Write ``<slug>.json`` (`frontend_json`) into ``folder`` and add it to the folder's
    ``graph-metadata.json`` (replacing an entry of the same slug). Returns the graph file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    document = frontend_json(graph, slug, **options)
    path = folder / f"{slug}.json"
    path.write_text(json.dumps(document, indent=1))
    index_path = folder / "graph-metadata.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"graphs": []}
    index["graphs"] = [g for g in index.get("graphs", []) if g.get("slug") != slug] + [document["metadata"]]
    index_path.write_text(json.dumps(index, indent=1))
    return path
