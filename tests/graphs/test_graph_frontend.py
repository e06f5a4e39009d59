"""The frontend JSON of a pruned graph: every field the viewer's graph model requires, with its
type (circuit-tracer's `frontend.graph_models`: Metadata, QParams, Node, links), node ids in its
conventions, links only between written nodes with the graph's weights, and the folder index."""

from __future__ import annotations

import json

import torch
from test_graph_attribution import _built

from mechscope.graphs.frontend import cumulative_influence

NODE_FIELDS = {"node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str,
               "token_prob": float, "is_target_logit": bool, "run_idx": int, "reverse_ctx_idx": int,
               "jsNodeId": str, "clerp": str}
METADATA_FIELDS = {"slug": str, "scan": str, "transcoder_list": list, "prompt_tokens": list, "prompt": str}
QPARAMS_FIELDS = {"pinnedIds": list, "supernodes": list, "linkType": str, "clickedId": str, "sg_pos": str}
KINDS = {"cross layer transcoder", "mlp reconstruction error", "embedding", "logit"}


def _typed(document: dict, fields: dict) -> None:
    for name, kind in fields.items():
        assert isinstance(document[name], kind), (name, document[name])


def test_frontend_document(tmp_path):
    _, _, _, graph = _built("llama")
    pruned = graph.prune()
    label = tuple(pruned.feature_index[0, [0, 2]].tolist())
    path = pruned.save_frontend(tmp_path, "tiny-llama", labels={label: "a test label"})
    document = json.loads(path.read_text())
    _typed(document["metadata"], METADATA_FIELDS)
    _typed(document["qParams"], QPARAMS_FIELDS)
    assert document["metadata"]["prompt_tokens"] == graph.token_texts
    ids = [node["node_id"] for node in document["nodes"]]
    assert len(ids) == len(set(ids))
    for node in document["nodes"]:
        _typed(node, NODE_FIELDS)
        assert node["feature_type"] in KINDS and (node["influence"] is None or 0 <= node["influence"] <= 1 + 1e-6)
    kinds = [node["feature_type"] for node in document["nodes"]]
    assert kinds.count("embedding") == graph.n_pos and kinds.count("logit") == len(graph.logit_labels)
    assert any(node["clerp"] == "a test label" for node in document["nodes"])
    logit = next(node for node in document["nodes"] if node["is_target_logit"])
    assert logit["node_id"] == f"{graph.n_layers + 1}_{int(graph.logit_tokens[0])}_{graph.n_pos - 1}"
    weights = {(link["source"], link["target"]): link["weight"] for link in document["links"]}
    assert set(weights) and all(s in ids and t in ids for s, t in weights)
    assert len(weights) == int((pruned.adjacency != 0).sum())  # every kept edge, each once
    layer, pos, latent = pruned.feature_index[0].tolist()
    assert f"{layer}_{latent}_{pos}" in ids or not pruned.kept[0]
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["tiny-llama"]
    pruned.save_frontend(tmp_path, "tiny-llama")  # the same slug again replaces its entry
    assert len(json.loads((tmp_path / "graph-metadata.json").read_text())["graphs"]) == 1


def test_cumulative_influence():
    shares = cumulative_influence(torch.tensor([1.0, 3.0, 0.0, 4.0]))
    torch.testing.assert_close(shares, torch.tensor([1.0, 7 / 8, 1.0, 0.5]))
