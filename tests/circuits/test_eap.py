"""EAP and EAP-IG edge scores against independent references: exact single-edge patching on
a model linear in its residual stream (where first order is exact), finite differences on a
tiny random model, the IG schedules' conventions, sums over prompts, node = row sums."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny
from helpers import linear_model, pairs_for, two_forward_edge_patch

import mechscope.circuits as C
from mechscope.causal.metrics import logit_diff
from mechscope.circuits.eap import chunks

_BUILT: dict = {}


def _setup(name: str):
    if name not in _BUILT:
        if name == "linear":
            model = linear_model()
            tokens = torch.randint(3, 97, (3, 10), generator=torch.Generator().manual_seed(1))
        else:
            tiny = build_tiny(name)
            model, tokens = tiny.model, tiny.tokens
        _BUILT[name] = (model, pairs_for(tokens))
    return _BUILT[name]


def test_eap_equals_exact_edge_patching_on_a_linear_model():
    model, pairs = _setup("linear")
    eap = C.eap(model, pairs).scores
    exact = C.edge_patching(model, pairs, variants_per_pass=16).scores
    graph = C.Graph.from_model(model)
    assert not exact[graph.real].isnan().any()
    scale = float(exact[graph.real].abs().max())
    assert scale > 1.0
    assert torch.allclose(eap[graph.real], exact[graph.real], atol=2e-5 * scale)
    # ... and IG of a linear function is its gradient: every schedule gives the same scores
    for method in ("EAP-IG-inputs", "EAP-IG-activations", "clean-corrupted"):
        other = C.attribute(model, pairs, method=method, steps=3).scores
        assert torch.allclose(other, eap, atol=2e-5 * scale), method


def test_a_nonlinear_model_is_not_first_order_exact():
    """The linear-model test means something: on a random model EAP and exact patching differ."""
    model, pairs = _setup("llama")
    graph = C.Graph.from_model(model)
    edges = [(0, graph.n_dst - 1), (graph.src_index(0, 1), graph.dst_names.index("a1.h0<q>"))]
    exact = C.edge_patching(model, pairs, edges=edges).scores
    eap = C.eap(model, pairs).scores
    assert max(abs(float(eap[e] - exact[e])) for e in edges) > 1e-2


@pytest.mark.parametrize("family", ["llama", "gpt2", "gptj"])
def test_eap_is_the_first_order_term_of_edge_patching(family):
    """d/d eps of metric(edge input + eps * (corrupted - clean) of the source) at 0 is the EAP
    score: central finite differences with the plain two-forward recipe."""
    model, pairs = _setup(family)
    graph = C.Graph.from_model(model)
    eap = C.eap(model, pairs).scores
    names = {d.name: j for j, d in enumerate(graph.destinations)}
    kv = graph.kv_label(0)
    for src, dst in [("input", "a0.h1<q>"), ("input", f"a1.{kv}<k>"), ("a0.h2", f"a1.{kv}<v>"),
                     ("a0.h0", "m1"), ("m0", "logits"), ("a1.h3", "logits")]:
        i, j = graph.src_names.index(src), names[dst]
        eps = 1e-2
        up = two_forward_edge_patch(model, graph, pairs, i, j, logit_diff, scale=eps).double().sum()
        down = two_forward_edge_patch(model, graph, pairs, i, j, logit_diff, scale=-eps).double().sum()
        derivative = float((up - down) / (2 * eps))
        assert float(eap[i, j]) == pytest.approx(derivative, rel=2e-2, abs=2e-3), f"{src}->{dst}"


def test_eap_ig_with_one_step_is_eap():
    """Convention: alpha = k / steps for k = 1..steps ("right"), so one step is the clean point."""
    model, pairs = _setup("llama")
    eap = C.eap(model, pairs).scores
    assert torch.allclose(C.eap_ig(model, pairs, steps=1).scores, eap, atol=1e-5)
    assert torch.allclose(C.eap_ig(model, pairs, steps=1, inputs=False).scores, eap, atol=1e-5)
    left = C.eap_ig(model, pairs, steps=1, rule="left").scores  # hannamw/EAP-IG's: the corrupted point
    assert not torch.allclose(left, eap, atol=1e-2)
    assert C.alphas(4) == [0.25, 0.5, 0.75, 1.0] and C.alphas(4, "left") == [0.0, 0.25, 0.5, 0.75]


def test_ig_inputs_approaches_the_path_integral():
    """Completeness: the input node's EAP-IG-inputs score approaches metric(input embedding
    ablated) - metric(clean) as the steps grow (the integral of the gradient along the path)."""
    model, pairs = _setup("llama")
    with torch.no_grad():
        clean = float(logit_diff(model(pairs.clean), pairs).sum())
        _, cache = model.run_with_cache(pairs.corrupted, "blocks.0.resid_pre")
        corrupted_input = cache["blocks.0.resid_pre"]
        patched = model.run_with_hooks(pairs.clean, {"blocks.0.resid_pre": lambda x, ctx: corrupted_input.clone()})
    target = float(logit_diff(patched, pairs).sum()) - clean  # the input fully ablated
    errors = []
    for steps in (2, 16):
        node = C.attribute(model, pairs, method="EAP-IG-inputs", steps=steps, level="node").scores
        errors.append(abs(float(node[0]) - target))
    assert errors[1] < errors[0] and errors[1] < 0.05 * abs(target)


def test_scores_are_sums_over_prompts():
    model, pairs = _setup("llama")
    whole = C.eap(model, pairs).scores
    assert torch.allclose(C.eap(model, pairs, batch_size=1).scores, whole, atol=1e-5)
    first, rest = (C.eap(model, chunk).scores for chunk in chunks(pairs, 2))
    assert torch.allclose(first + rest, whole, atol=1e-5)
    ig = C.eap_ig(model, pairs, steps=3).scores
    assert torch.allclose(C.eap_ig(model, pairs, steps=3, batch_size=2).scores, ig, atol=1e-5)


def test_node_scores_are_row_sums_of_edge_scores():
    """Two code paths: gradients at the source outputs (node) vs at every destination input (edge)."""
    for name in ("llama", "gptj"):
        model, pairs = _setup(name)
        edge = C.eap(model, pairs).scores
        node = C.attribute(model, pairs, level="node").scores
        assert torch.allclose(node, edge.sum(1), atol=1e-5 * float(edge.abs().sum(1).max()))


def test_zero_and_mean_ablation_scores():
    """Mean ablation over a single prompt is that prompt's corrupted run."""
    model, pairs = _setup("llama")
    one = next(chunks(pairs, 1))
    assert torch.allclose(C.eap(model, one, ablation="mean").scores, C.eap(model, one).scores, atol=1e-5)
    zero = C.eap(model, pairs, ablation="zero")
    assert zero.ablation == "zero" and not torch.allclose(zero.scores, C.eap(model, pairs).scores)


def test_answer_only_metrics_unembed_at_the_answer_alone():
    """logit_diff reads only the answer position, so scores and faithfulness unembed there alone;
    the same metric without that declaration (full logits) gives the same numbers."""
    model, pairs = _setup("llama")

    def full_logit_diff(logits, pairs):  # not declared reads_answer_only
        return logit_diff(logits, pairs)

    for method in ("EAP", "EAP-IG-inputs"):
        fast, slow = C.attribute(model, pairs, method=method, steps=2), C.attribute(model, pairs, full_logit_diff,
                                                                                 method=method, steps=2)
        assert torch.allclose(fast.scores, slow.scores, atol=1e-5 * float(slow.scores.abs().max()))
        assert fast.corrupted_metric == pytest.approx(slow.corrupted_metric, abs=1e-5)
    circuit = [fast.top_n(40).in_graph]
    a, _ = C.evaluate_circuits(model, fast.graph, pairs, logit_diff, circuit)
    b, _ = C.evaluate_circuits(model, fast.graph, pairs, full_logit_diff, circuit)
    assert abs(a - b).max() < 1e-5
