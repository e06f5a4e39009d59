"""The component graph: name tables and real edges against an independent reference (an
execution-order simulation of who writes before whom), EAP-IG's sizes, SmolLM2's counts."""

from __future__ import annotations

import pytest
from conftest import FAMILY_IDS, build_tiny

from mechscope.circuits import Graph

SMOLLM2 = {"n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "parallel_attn_mlp": False, "d_model": 576}


def reference_real(cfg: dict) -> tuple[list[str], list[str], set[tuple[str, str]]]:
    """Sources, destinations and edges from a simulation of one forward: every read sees
    exactly the writes made before it."""
    L, H, G, parallel = cfg["n_layers"], cfg["n_heads"], cfg.get("n_kv_heads", cfg["n_heads"]), cfg["parallel_attn_mlp"]
    written, srcs, dsts, edges = ["input"], ["input"], [], set()

    def read(dst: str) -> None:
        dsts.append(dst)
        edges.update((w, dst) for w in written)

    for l in range(L):
        heads = [f"a{l}.h{h}" for h in range(H)]
        kv = [f"a{l}.h{g}" if G == H else f"a{l}.kv{g}" for g in range(G)]
        for h in heads:
            read(f"{h}<q>")
        for letter in "kv":
            for k in kv:
                read(f"{k}<{letter}>")
        if parallel:
            read(f"m{l}")
        written += heads
        if not parallel:
            read(f"m{l}")
        written.append(f"m{l}")
        srcs += heads + [f"m{l}"]
    read("logits")
    return srcs, dsts, edges


@pytest.mark.parametrize("cfg", [SMOLLM2, {**SMOLLM2, "parallel_attn_mlp": True},
                                 {"n_layers": 3, "n_heads": 4, "n_kv_heads": 4, "parallel_attn_mlp": False, "d_model": 8}])
def test_tables_match_an_execution_order_simulation(cfg):
    graph = Graph(cfg)
    srcs, dsts, edges = reference_real(cfg)
    assert graph.src_names == srcs and graph.dst_names == dsts
    found = {(graph.src_names[i], graph.dst_names[j]) for i, j in graph.real.nonzero().tolist()}
    assert found == edges
    assert graph.n_edges == len(edges) == int(graph.real.sum())


def test_smollm2_counts():
    graph = Graph(SMOLLM2)
    assert (graph.n_src, graph.n_dst, graph.n_edges) == (301, 481, 70651)
    expanded = Graph({**SMOLLM2, "n_kv_heads": 9})  # EAP-IG's per-query-head layout
    assert (expanded.n_src, expanded.n_dst, expanded.n_edges) == (301, 841, 123211)


def test_eap_ig_sizes_and_names_for_multi_head_attention():
    """With one KV head per query head the layout is hannamw/EAP-IG's exactly: n_forward =
    1 + L(H+1), n_backward = L(3H+1) + 1, its naming and index order."""
    L, H = 4, 3
    graph = Graph({"n_layers": L, "n_heads": H, "parallel_attn_mlp": False, "d_model": 8})
    assert graph.n_src == 1 + L * (H + 1) and graph.n_dst == L * (3 * H + 1) + 1
    assert graph.src_names[:6] == ["input", "a0.h0", "a0.h1", "a0.h2", "m0", "a1.h0"]
    assert graph.dst_names[:10] == [f"a0.h{h}<{x}>" for x in "qkv" for h in range(H)] + ["m0"]
    assert graph.edge_name(4, graph.dst_names.index("a1.h2<v>")) == "m0->a1.h2<v>"
    # EAP-IG's forward index of m{l} and a{l}.h{h}
    assert graph.src_index(2) == 1 + 2 * (H + 1) + H and graph.src_index(2, 1) == 1 + 2 * (H + 1) + 1


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_from_model_reads_the_block_layout(family):
    model = build_tiny(family).model
    graph = Graph.from_model(model)
    assert graph.cfg["parallel_attn_mlp"] == model.cfg.parallel_attn_mlp
    mlp0 = graph.dst_names.index("m0")
    reads_heads = bool(graph.real[graph.src_index(0, 0), mlp0])
    assert reads_heads == (not model.cfg.parallel_attn_mlp)
    for d in graph.destinations:  # every hook a destination or source names exists
        assert d.hook in model.names or d.hook.endswith(("_input", "mlp.in"))
    for s in graph.sources:
        assert s.hook in model.names


def test_owner_maps_kv_inputs_to_their_query_group():
    graph = Graph({"n_layers": 1, "n_heads": 4, "n_kv_heads": 2, "parallel_attn_mlp": False, "d_model": 8})
    j = graph.dst_names.index("a0.kv1<k>")
    assert graph.owner[:, j].nonzero()[:, 0].tolist() == [graph.src_index(0, 2), graph.src_index(0, 3)]
    assert not graph.owner[:, -1].any()  # the logits belong to no source


def test_node_level_scores_are_per_source():
    graph = Graph(SMOLLM2, level="node")
    assert graph.empty_scores().shape == (301,)
    with pytest.raises(Exception, match="level"):
        Graph(SMOLLM2, level="neuron")
