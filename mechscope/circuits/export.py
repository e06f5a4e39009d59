"""Circuits and scores as files: hannamw/EAP-IG's JSON and PT layouts (readable by its
``Graph.from_json`` / ``Graph.from_pt`` and MIB's tooling) and Graphviz DOT.

EAP-IG's layout has a k and a v input per *query* head (TransformerLens expands GQA). For a
GQA model the export expands mechscope's per-KV-head destinations: each query head of a group
gets the group's membership and an equal share of its score (so the group's total is kept);
``cfg["n_key_value_heads"]`` records the grouping and `read_eap_ig` folds the shares back.

    layout (n_layers L, n_heads H):
      sources  (forward):  input, a0.h0 .. a0.h{H-1}, m0, a1.h0, ..., m{L-1}        1 + L(H+1)
      destinations (backward): per layer a{l}.h*<q>, a{l}.h*<k>, a{l}.h*<v>, m{l}; logits   L(3H+1) + 1
      PT:   {cfg, src_nodes, dst_nodes, edges_scores [src, dst], edges_in_graph, nodes_in_graph[, nodes_scores]}
      JSON: {cfg, nodes: {name: {in_graph[, score]}}, edges: {"src->dst<q>": {score, in_graph}}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import ResultFileError, SelectionError
from .graph import Graph
from .result import Circuit, CircuitScores


def eap_ig_cfg(graph: Graph) -> dict:
    return {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "parallel_attn_mlp": bool(graph.cfg["parallel_attn_mlp"]),
            "d_model": int(graph.cfg["d_model"]), "n_key_value_heads": graph.n_kv_heads}


def eap_ig_destinations(graph: Graph) -> tuple[list[str], list[int], list[float]]:
    """EAP-IG's destination names, and for each the mechscope destination it comes from and the
    share of that destination's score it gets (1, or 1 / group size for expanded k/v inputs)."""
    H, G = graph.n_heads, graph.n_kv_heads
    group = H // G
    index = {name: j for j, name in enumerate(graph.dst_names)}
    names, source, share = [], [], []
    for l in range(graph.n_layers):
        for qkv in "qkv":
            for h in range(H):
                names.append(f"a{l}.h{h}<{qkv}>")
                ours = f"a{l}.h{h}<q>" if qkv == "q" else f"a{l}.{graph.kv_label(h // group)}<{qkv}>"
                source.append(index[ours])
                share.append(1.0 if qkv == "q" else 1.0 / group)
        names.append(f"m{l}")
        source.append(index[f"m{l}"])
        share.append(1.0)
    names.append("logits")
    source.append(index["logits"])
    share.append(1.0)
    return names, source, share


def _tables(item: Circuit | CircuitScores) -> tuple[Graph, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(graph, edge scores, in_graph, nodes_in_graph, node scores or None)`` in mechscope's layout."""
    if item.spans is not None:
        raise SelectionError("EAP-IG's layout has no positions: export position-aware circuits as DOT, or "
                             "sum the span axis first")
    graph = item.graph
    if isinstance(item, Circuit):
        return graph, item.scores.float(), item.in_graph, item.nodes_in_graph, None
    if item.level == "node":
        nodes = torch.ones(graph.n_src, dtype=torch.bool)
        return graph, torch.zeros(graph.n_src, graph.n_dst), graph.real.clone(), nodes, item.scores.float()
    return graph, item.scores.float(), graph.real.clone(), torch.ones(graph.n_src, dtype=torch.bool), None


def to_eap_ig(item: Circuit | CircuitScores) -> dict:
    """The PT dictionary of EAP-IG's ``Graph.to_pt`` (scores alone export with every edge in)."""
    graph, scores, keep, nodes, node_scores = _tables(item)
    names, source, share = eap_ig_destinations(graph)
    idx = torch.tensor(source)
    out = {"cfg": eap_ig_cfg(graph), "src_nodes": list(graph.src_names), "dst_nodes": names,
           "edges_scores": (scores[:, idx] * torch.tensor(share)[None, :]) * _eap_ig_real(graph),
           "edges_in_graph": keep[:, idx] & _eap_ig_real(graph), "nodes_in_graph": nodes.clone()}
    if node_scores is not None:
        out["nodes_scores"] = node_scores.clone()
    return out


def _eap_ig_real(graph: Graph) -> torch.Tensor:
    _, source, _ = eap_ig_destinations(graph)
    return graph.real[:, torch.tensor(source)]


def save_pt(item: Circuit | CircuitScores, path: str | os.PathLike) -> Path:
    """Write EAP-IG's PT layout (``torch.save`` of tensors, lists and a dict: loadable with
    ``torch.load(path, weights_only=True)``)."""
    torch.save(to_eap_ig(item), path)
    return Path(path)


def save_json(item: Circuit | CircuitScores, path: str | os.PathLike) -> Path:
    """Write EAP-IG's JSON layout (every real edge with its score and membership)."""
    d = to_eap_ig(item)
    real = _eap_ig_real(item.graph)
    nodes = {name: {"in_graph": bool(on)} for name, on in zip(d["src_nodes"], d["nodes_in_graph"].tolist())}
    if "nodes_scores" in d:
        for name, score in zip(d["src_nodes"], d["nodes_scores"].tolist()):
            nodes[name]["score"] = float(score)
    nodes["logits"] = {"in_graph": True}
    scores, keep = d["edges_scores"].tolist(), d["edges_in_graph"].tolist()
    edges = {}
    for i, j in real.nonzero().tolist():
        edges[f"{d['src_nodes'][i]}->{d['dst_nodes'][j]}"] = {"score": scores[i][j], "in_graph": keep[i][j]}
    Path(path).write_text(json.dumps({"cfg": d["cfg"], "nodes": nodes, "edges": edges}))
    return Path(path)


def read_eap_ig(path: str | os.PathLike) -> Circuit:
    """A `Circuit` from an EAP-IG PT or JSON file (ours or EAP-IG's own); for a GQA model the
    per-query-head k/v entries of a group fold back into the KV head (membership: any; score: sum)."""
    path = Path(path)
    if not path.is_file():
        raise ResultFileError(f"no circuit file at {path}")
    if path.suffix == ".json":
        d = json.loads(path.read_text())
        graph = Graph({**_our_cfg(d["cfg"])})
        names, _, _ = eap_ig_destinations(graph)
        column = {n: j for j, n in enumerate(names)}
        row = {n: i for i, n in enumerate(graph.src_names)}
        scores = torch.zeros(graph.n_src, len(names))
        keep = torch.zeros(graph.n_src, len(names), dtype=torch.bool)
        for name, info in d["edges"].items():
            src, dst = name.split("->")
            scores[row[src], column[dst]] = info["score"]
            keep[row[src], column[dst]] = bool(info["in_graph"])
        nodes = torch.tensor([bool(d["nodes"].get(n, {}).get("in_graph", False)) for n in graph.src_names])
    else:
        try:
            d = torch.load(path, weights_only=True)
        except Exception as error:
            raise ResultFileError(f"{path} is not an EAP-IG .pt circuit file ({error})") from error
        graph = Graph(_our_cfg(d["cfg"]))
        scores, keep, nodes = d["edges_scores"].float(), d["edges_in_graph"].bool(), d["nodes_in_graph"].bool()
    _, source, _ = eap_ig_destinations(graph)
    ours_scores = torch.zeros(graph.n_src, graph.n_dst).index_add_(1, torch.tensor(source), scores)
    ours_keep = torch.zeros(graph.n_src, graph.n_dst).index_add_(1, torch.tensor(source), keep.float()) > 0
    return Circuit(dict(graph.cfg), ours_scores, ours_keep & graph.real, nodes, selection=f"read from {path.name}")


def _our_cfg(cfg: dict) -> dict:
    return {"n_layers": int(cfg["n_layers"]), "n_heads": int(cfg["n_heads"]),
            "n_kv_heads": int(cfg.get("n_key_value_heads") or cfg["n_heads"]),
            "parallel_attn_mlp": bool(cfg["parallel_attn_mlp"]), "d_model": int(cfg["d_model"])}


QKV_COLOURS = {"q": "#b8860b", "k": "#2e8b57", "v": "#6a5acd", "": "#555555"}


def to_dot(circuit: Circuit, *, min_width: float = 0.6, max_width: float = 5.0) -> str:
    """The circuit as Graphviz DOT: a box per node in the circuit, an edge per kept edge, pen
    width by |score| (scaled between ``min_width`` and ``max_width``), colour by the input it
    enters (q, k, v, MLP/logits), dashed when the score is negative, tooltip with the score."""
    graph = circuit.graph
    frame = circuit.to_dataframe()
    header = '  rankdir=BT; node [shape=box, style="filled,rounded", fontname=Helvetica, fillcolor="#eeeeee"];'
    lines = ["digraph circuit {", header]
    members = [n for n, on in zip(graph.src_names, circuit.nodes_in_graph.tolist()) if on] + ["logits"]
    targets = {dst: _targets(graph, dst.split("<")[0], members) for dst in set(frame["dst"])}
    used = set(frame["src"]) | {t for ts in targets.values() for t in ts}
    lines += [f'  "{name}";' for name in members if name in used]
    bound = float(frame["score"].abs().max()) if len(frame) else 1.0
    where = frame["span"].map(lambda s: f"@{s}") if "span" in frame else [""] * len(frame)
    for src, dst, qkv, score, at in zip(frame["src"], frame["dst"], frame["qkv"], frame["score"], where):
        width = max(min_width, abs(score) / (bound or 1.0) * max_width)
        style = ", style=dashed" if score < 0 else ""
        label = f', label="{at[1:]}"' if at else ""
        for target in targets[dst]:
            lines.append(f'  "{src}" -> "{target}" [penwidth={width:.3f}, color="{QKV_COLOURS[qkv]}"{style}{label}, '
                         f'tooltip="{src}->{dst}{at}: {score:.4g}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _targets(graph: Graph, node: str, members: list[str]) -> list[str]:
    """The circuit nodes a destination node feeds: itself, or for a KV head the query heads of
    its group that are in the circuit (they share its key and value)."""
    if ".kv" not in node:
        return [node]
    layer, group = node[1:].split(".kv")
    size = graph.n_heads // graph.n_kv_heads
    heads = [f"a{layer}.h{h}" for h in range(int(group) * size, (int(group) + 1) * size)]
    return [h for h in heads if h in members]


def save_dot(circuit: Circuit, path: str | os.PathLike) -> Path:
    Path(path).write_text(to_dot(circuit))
    return Path(path)
