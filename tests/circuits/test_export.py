"""Exports in hannamw/EAP-IG's layout (its index order and names, stated in its eap/graph.py),
round trips, GQA expansion, and Graphviz DOT."""

from __future__ import annotations

import json
import re

import torch

from mechscope.circuits import CircuitScores, Graph, read_eap_ig, save_dot, save_json, save_pt, to_eap_ig

GQA = {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "parallel_attn_mlp": False, "d_model": 8}
MHA = {**GQA, "n_kv_heads": 4}


def _scores(cfg: dict, seed: int = 0) -> CircuitScores:
    graph = Graph(cfg)
    values = torch.randn(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(seed)) * graph.real
    return CircuitScores(cfg, "edge", values, "EAP", "logit_diff", "corrupted", n_prompts=3)


def eap_ig_dst_names(L: int, H: int) -> list[str]:
    """EAP-IG's Graph.get_dst_nodes, restated."""
    out = []
    for layer in range(L):
        out += [f"a{layer}.h{h}<{x}>" for x in "qkv" for h in range(H)]
        out.append(f"m{layer}")
    return out + ["logits"]


def test_pt_layout_is_eap_ig_for_multi_head_attention(tmp_path):
    scores = _scores(MHA)
    circuit = scores.top_n(12)
    path = save_pt(circuit, tmp_path / "c.pt")
    d = torch.load(path, weights_only=True)
    assert set(d) == {"cfg", "src_nodes", "dst_nodes", "edges_scores", "edges_in_graph", "nodes_in_graph"}
    assert d["dst_nodes"] == eap_ig_dst_names(2, 4) and d["src_nodes"] == Graph(MHA).src_names
    assert d["edges_scores"].shape == (1 + 2 * 5, 2 * 13 + 1)
    assert torch.equal(d["edges_scores"], circuit.scores) and torch.equal(d["edges_in_graph"], circuit.in_graph)
    assert {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"} <= set(d["cfg"])
    back = read_eap_ig(path)
    assert torch.equal(back.in_graph, circuit.in_graph) and torch.allclose(back.scores, circuit.scores)


def test_gqa_export_expands_kv_heads_and_folds_back(tmp_path):
    scores = _scores(GQA, 1)
    circuit = scores.greedy(15, prune=False)
    d = to_eap_ig(circuit)
    assert d["dst_nodes"] == eap_ig_dst_names(2, 4) and d["edges_scores"].shape[1] == 2 * 13 + 1
    graph = Graph(GQA)
    ours, theirs = graph.dst_names.index("a1.kv1<k>"), d["dst_nodes"].index("a1.h2<k>")
    assert torch.allclose(d["edges_scores"][:, theirs], circuit.scores[:, ours] / 2)  # an equal share each
    assert torch.equal(d["edges_in_graph"][:, theirs], circuit.in_graph[:, ours])
    assert torch.equal(d["edges_in_graph"][:, d["dst_nodes"].index("a1.h3<k>")], circuit.in_graph[:, ours])
    assert torch.allclose(d["edges_scores"].sum(), (circuit.scores * graph.real).sum(), atol=1e-5)
    back = read_eap_ig(save_pt(circuit, tmp_path / "c.pt"))
    assert torch.equal(back.in_graph, circuit.in_graph) and torch.allclose(back.scores, circuit.scores, atol=1e-6)


def test_json_layout_and_round_trip(tmp_path):
    scores = _scores(GQA, 2)
    circuit = scores.top_n(10)
    path = save_json(circuit, tmp_path / "c.json")
    d = json.loads(path.read_text())
    assert set(d) == {"cfg", "nodes", "edges"}
    graph = Graph(MHA)  # the expanded layout has EAP-IG's real edges
    assert len(d["edges"]) == graph.n_edges
    assert set(d["nodes"]) == set(graph.src_names) | {"logits"} and d["nodes"]["logits"]["in_graph"]
    assert "input->a0.h3<k>" in d["edges"] and "m0->a1.h0<q>" in d["edges"] and "a1.h0->m0" not in d["edges"]
    kept = {name for name, info in d["edges"].items() if info["in_graph"]}
    expected = set()
    for edge in circuit.to_dataframe()["edge"]:
        src, dst = edge.split("->")
        if ".kv" in dst:  # expanded to both query heads of the group
            layer, rest = dst[1:].split(".kv")
            group, letter = rest.split("<")
            expected |= {f"{src}->a{layer}.h{h}<{letter}" for h in (2 * int(group), 2 * int(group) + 1)}
        else:
            expected.add(edge)
    assert kept == expected
    back = read_eap_ig(path)
    assert torch.equal(back.in_graph, circuit.in_graph) and torch.allclose(back.scores, circuit.scores, atol=1e-6)


def test_node_scores_export():
    graph = Graph(MHA, "node")
    scores = CircuitScores(MHA, "node", torch.arange(graph.n_src, dtype=torch.float), "EAP", "m", "corrupted")
    d = to_eap_ig(scores)
    assert torch.equal(d["nodes_scores"], scores.scores)


def test_dot_has_a_line_per_kept_edge(tmp_path):
    circuit = _scores(GQA, 3).greedy(8)
    text = save_dot(circuit, tmp_path / "c.dot").read_text()
    assert text.startswith("digraph circuit {") and text.rstrip().endswith("}")
    drawn = re.findall(r'"([^"]+)" -> "([^"]+)" \[penwidth=([0-9.]+), .*tooltip="([^:]+): ', text)
    tooltips = {t for *_, t in drawn}
    assert tooltips == set(circuit.to_dataframe()["edge"])
    declared = set(re.findall(r'^  "([^"]+)";$', text, flags=re.MULTILINE))
    assert {a for a, *_ in drawn} | {b for _, b, *_ in drawn} <= declared
