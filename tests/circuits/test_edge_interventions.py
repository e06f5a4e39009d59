"""Edge-patched forwards: full and empty circuits reproduce the clean and corrupted runs on
every tiny family; single-edge patching equals the plain two-forward recipe written with
ordinary hooks; stacked masks equal separate forwards; the memory bound."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILY_IDS, build_tiny
from helpers import pairs_for, two_forward_edge_patch

import mechscope.circuits as C
from mechscope.causal.metrics import logit_diff
from mechscope.errors import MechscopeError

_BUILT: dict = {}


def _tiny(family: str):
    if family not in _BUILT:
        _BUILT[family] = build_tiny(family)
    return _BUILT[family]


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_full_circuit_is_clean_and_empty_circuit_is_corrupted(family):
    tiny = _tiny(family)
    model, pairs = tiny.model, pairs_for(tiny.tokens)
    graph = C.Graph.from_model(model)
    empty = torch.zeros_like(graph.real)
    values, clean = C.evaluate_circuits(model, graph, pairs, logit_diff, [graph.real, empty], variants_per_pass=2)
    with torch.no_grad():
        corrupted = logit_diff(model(pairs.corrupted), pairs).double().numpy()
    assert abs(clean - corrupted).max() > 0.1  # the corruption matters
    assert abs(values[0] - clean).max() < 1e-5
    assert abs(values[1] - corrupted).max() < 1e-5


def _edge_sample(graph: C.Graph) -> list[tuple[int, int]]:
    """One edge of each kind: input/head/MLP sources into q, k, v, MLP and logits destinations."""
    last = graph.n_layers - 1
    names = {d.name: j for j, d in enumerate(graph.destinations)}
    kv = graph.kv_label(graph.n_kv_heads - 1)
    wanted = [("input", "a0.h1<q>"), ("input", f"a0.{kv}<k>"), ("a0.h2", f"a{last}.{kv}<v>"), ("a0.h3", f"a{last}.h0<q>"),
              ("m0", f"a{last}.h2<q>"), ("input", "m0"), ("a0.h1", "m0"), ("a0.h0", f"m{last}"),
              (f"a{last}.h3", "logits"), (f"m{last}", "logits"), ("input", "logits")]
    out = [(graph.src_names.index(s), names[d]) for s, d in wanted]
    return [(i, j) for i, j in out if graph.real[i, j]]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gptj", "gemma2", "gpt_neox"])
def test_single_edge_patching_equals_the_two_forward_recipe(family):
    tiny = _tiny(family)
    model, pairs = tiny.model, pairs_for(tiny.tokens)
    graph = C.Graph.from_model(model)
    edges = _edge_sample(graph)
    exact = C.edge_patching(model, pairs, edges=edges, variants_per_pass=4)
    for i, j in edges:
        with torch.no_grad():
            clean = logit_diff(model(pairs.clean), pairs)
        reference = (two_forward_edge_patch(model, graph, pairs, i, j, logit_diff) - clean).sum()
        assert float(exact.scores[i, j]) == pytest.approx(float(reference), abs=2e-5), graph.edge_name(i, j)
    assert any(abs(float(exact.scores[i, j])) > 1e-2 for i, j in edges)


def test_stacked_masks_equal_separate_forwards_and_bf16_buffer_is_close():
    tiny = _tiny("llama")
    model, pairs = tiny.model, pairs_for(tiny.tokens)
    graph = C.Graph.from_model(model)
    gen = torch.Generator().manual_seed(0)
    masks = [(torch.rand(graph.n_src, graph.n_dst, generator=gen) < p) & graph.real for p in (0.1, 0.5, 0.9)]
    stacked, _ = C.evaluate_circuits(model, graph, pairs, logit_diff, masks, variants_per_pass=3)
    for mask, row in zip(masks, stacked):
        alone, _ = C.evaluate_circuits(model, graph, pairs, logit_diff, [mask], variants_per_pass=1)
        assert abs(alone[0] - row).max() < 1e-5
    half, _ = C.evaluate_circuits(model, graph, pairs, logit_diff, masks, buffer_dtype=torch.bfloat16)
    assert abs(half - stacked).max() < 0.05 * abs(stacked).max()


def test_learned_masks_get_gradients_that_match_finite_differences():
    """A float mask (edge pruning's relaxation) is differentiable through the patched forward."""
    tiny = _tiny("llama")
    model, pairs = tiny.model, pairs_for(tiny.tokens)
    graph = C.Graph.from_model(model)
    ablated = C.ablated_sources(model, graph, pairs.corrupted)
    base = graph.real.float() * 0.5

    def metric_at(mask: torch.Tensor) -> torch.Tensor:
        logits = C.patched_logits(model, graph, pairs.clean, ablated, C.pruned_weights(graph, mask))
        return logit_diff(logits, pairs).double().sum()

    mask = base.clone().requires_grad_(True)
    with torch.enable_grad():
        metric_at(mask).backward()
    names = {d.name: j for j, d in enumerate(graph.destinations)}
    for src, dst in [("input", "a0.h1<q>"), ("a0.h2", "a1.kv0<k>"), ("a0.h0", "m1"), ("m1", "logits")]:
        i, j = graph.src_names.index(src), names[dst]
        h = 0.01  # the input -> layer-0 edges are far from linear over larger steps
        up, down = base.clone(), base.clone()
        up[i, j] += h
        down[i, j] -= h
        with torch.no_grad():
            derivative = float((metric_at(up) - metric_at(down)) / (2 * h))
        assert float(mask.grad[i, j]) == pytest.approx(derivative, rel=2e-2, abs=1e-4), f"{src}->{dst}"


def test_learned_masks_get_gradients():
    """At mask = 1 (everything kept) the mask's gradient equals EAP's score up to sign
    (d m / d mask = -score), including the edges into q/k/v inputs."""
    tiny = _tiny("llama")
    model, pairs = tiny.model, pairs_for(tiny.tokens)
    graph = C.Graph.from_model(model)
    mask = graph.real.float().requires_grad_(True)
    ablated = C.ablated_sources(model, graph, pairs.corrupted)
    with torch.enable_grad():
        logits = C.patched_logits(model, graph, pairs.clean, ablated, C.pruned_weights(graph, mask))
        logit_diff(logits, pairs).sum().backward()
    eap = C.eap(model, pairs).scores
    assert torch.allclose(-mask.grad * graph.real, eap, atol=1e-4 * float(eap.abs().max()))


def test_buffer_bytes_per_token():
    smol = C.Graph({"n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "parallel_attn_mlp": False, "d_model": 576})
    assert C.buffer_bytes_per_token(smol, with_ablated=False) == 301 * 576 * 4 == 693_504
    assert C.buffer_bytes_per_token(smol, torch.bfloat16) == 2 * 301 * 576 * 2
    llama3_8b = C.Graph({"n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "parallel_attn_mlp": False, "d_model": 4096})
    assert C.buffer_bytes_per_token(llama3_8b, with_ablated=False) == 1057 * 4096 * 4 == 17_317_888


def test_only_sources_with_a_pruned_edge_are_buffered():
    tiny = _tiny("llama")
    graph = C.Graph.from_model(tiny.model)
    keep = graph.real.clone()
    keep[graph.src_index(0, 1), graph.dst_names.index("m1")] = False
    patch = C.EdgePatch(graph, torch.zeros(1, 1, graph.n_src, 64), C.pruned_weights(graph, keep))
    assert patch.live.tolist() == [graph.src_index(0, 1)]  # one buffer slot per token
    assert list(patch.source_hooks) == ["blocks.0.attn.head_out"] and list(patch.dest_hooks) == ["blocks.1.mlp.in"]


def test_pieced_buffers_equal_the_contiguous_buffer():
    """The per-layer pieces a model split over devices uses (each layer's differences on its
    own device) give the contiguous buffer's logits, plain and position-aware."""
    tiny = _tiny("llama")
    model, pairs = tiny.model, pairs_for(tiny.tokens)
    graph = C.Graph.from_model(model)
    ablated = C.ablated_sources(model, graph, pairs.corrupted)
    keep = graph.real & (torch.rand(2, *graph.real.shape, generator=torch.Generator().manual_seed(4)) < 0.6)
    spans = C.Spans.from_positions(pairs, {"a": 2, "b": 4})
    for W, s in [(C.pruned_weights(graph, keep), None),
                 (C.pruned_weights(graph, keep[:, None] & (torch.rand(2, 3, *graph.real.shape) < 0.8), spans=3),
                  spans)]:
        outputs = []
        for pieced in (False, True):
            patch = C.EdgePatch(graph, ablated, W, spans=s, pieced=pieced)
            with torch.no_grad(), model.hooks(patch.hooks()):
                outputs.append(model(pairs.clean.repeat(2, 1)))
            assert (patch.buffer is None) == pieced and bool(patch.pieces) == pieced
        assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    assert model.devices == [torch.device("cpu")]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gptj", "gpt_neox"])
def test_kept_form_of_small_circuits_equals_the_pruned_form(family):
    """Destinations with fewer kept than pruned incoming edges take the running total of all
    differences minus the kept ones; the logits equal those of summing the pruned edges
    (``kept_sums=False``) and of the pieced buffer, sequential and parallel blocks alike, and
    from the clean prefix too."""
    tiny = _tiny(family)
    model, pairs = tiny.model, pairs_for(tiny.tokens)
    graph = C.Graph.from_model(model)
    ablated = C.ablated_sources(model, graph, pairs.corrupted)
    draw = torch.rand(2, *graph.real.shape, generator=torch.Generator().manual_seed(6))
    keep = graph.real & (draw < torch.tensor([0.02, 0.05])[:, None, None])
    W = C.pruned_weights(graph, keep)
    outputs, buffered = [], []
    for kept_sums, pieced in [(True, False), (False, False), (True, True)]:
        patch = C.EdgePatch(graph, ablated, W, pieced=pieced, kept_sums=kept_sums)
        with torch.no_grad(), model.hooks(patch.hooks()):
            outputs.append(model(pairs.clean.repeat(2, 1)))
        assert bool(patch.kept_form) == (kept_sums and not pieced)
        buffered.append(len(patch.live))
    assert buffered[0] < buffered[1] == buffered[2] == graph.n_src  # the kept form buffers fewer sources
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5) and torch.allclose(outputs[0], outputs[2], atol=1e-5)
    late = torch.tensor([d.layer >= 1 for d in graph.destinations])
    W = C.pruned_weights(graph, graph.real & ~(late & (draw[0] < 0.95)))
    prefix = C.CleanPrefix(model, graph, pairs.clean, ablated)
    with torch.no_grad():
        whole = C.patched_logits(model, graph, pairs.clean, ablated, W)
        started = C.patched_logits(model, graph, pairs.clean, ablated, W, prefix=prefix)
    assert torch.allclose(whole, started, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_patched_forward_from_the_clean_prefix_is_the_whole_forward(family):
    """With pruned edges only into layer 1 and the logits, starting at layer 1 on the clean
    run's residual (CleanPrefix) gives the full patched forward's logits; with logits_at too."""
    tiny = _tiny(family)
    model, pairs = tiny.model, pairs_for(tiny.tokens)
    graph = C.Graph.from_model(model)
    ablated = C.ablated_sources(model, graph, pairs.corrupted)
    prefix = C.CleanPrefix(model, graph, pairs.clean, ablated)
    late = torch.tensor([d.layer >= 1 for d in graph.destinations])
    drop = torch.rand(3, *graph.real.shape, generator=torch.Generator().manual_seed(5)) < 0.4
    keep = graph.real & ~(drop & late[None, None, :])
    only_logits = graph.real.clone()
    only_logits[: graph.src_index(0, 2), -1] = False
    at = pairs.answer_positions[:, None]
    for masks, start in [(keep, 1), (only_logits[None], 1), (graph.real & ~drop, 0)]:
        W = C.pruned_weights(graph, masks)
        assert C.start_layer(graph, W) == start
        with torch.no_grad():
            whole = C.patched_logits(model, graph, pairs.clean, ablated, W, logits_at=at)
            skipped = C.patched_logits(model, graph, pairs.clean, ablated, W, logits_at=at, prefix=prefix)
        assert torch.allclose(whole, skipped, atol=1e-5), start
    with pytest.raises(MechscopeError, match="other prompts"):
        C.patched_logits(model, graph, pairs.corrupted, ablated, C.pruned_weights(graph, keep), prefix=prefix)
