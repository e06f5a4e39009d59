"""On the 2-layer attention-only toy (``ms.cached_induction_model``) EAP-IG finds the induction
circuit: previous-token head -> induction head through the K input, and the circuit is
sufficient (ablating every edge outside it keeps the second copy's loss)."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
import mechscope.circuits as C
from mechscope.data.tasks import PromptPairs
from mechscope.toys.induction import cached_induction_model

SPAN, N = 12, 16


def copy_logprob(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
    """Mean log-probability of the correct next token over the second copy: `[batch]`."""
    logprobs = logits[:, SPAN : 2 * SPAN - 1].float().log_softmax(-1)
    return logprobs.gather(-1, pairs.clean[:, SPAN + 1 :, None])[..., 0].mean(-1)


@pytest.fixture(scope="module")
def toy():
    model = cached_induction_model(progress=False)
    clean = ms.repeated_random_tokens(SPAN, batch=N, low=0, high=256, seed=7)
    other = torch.randint(0, 256, (N, SPAN), generator=torch.Generator().manual_seed(8))
    pairs = PromptPairs(clean, torch.cat([other, clean[:, SPAN:]], 1), clean[:, -1], other[:, -1])
    return model, pairs


def test_eap_ig_finds_previous_token_to_induction_via_k(toy):
    model, pairs = toy
    detectors = ms.head_scores(model, ms.repeated_random_tokens(24, batch=16, low=0, high=256, seed=123))
    prev = detectors.top(1, kind="previous_token").iloc[0]
    induction = detectors.top(1, kind="induction").iloc[0]
    k_edge = f"a{int(prev.layer)}.h{int(prev['head'])}->a{int(induction.layer)}.h{int(induction['head'])}<k>"

    scores = C.eap_ig(model, pairs, copy_logprob, steps=5)
    graph = scores.graph
    sizes = list(range(3, 40))
    circuits = [scores.top_n(n, prune=True) for n in sizes]
    values, clean = C.evaluate_circuits(model, graph, pairs, copy_logprob,
                                        [c.in_graph for c in circuits] + [torch.zeros_like(graph.real)],
                                        variants_per_pass=8)
    empty = values[-1].mean()
    f = (values[:-1].mean(1) - empty) / (clean.mean() - empty)
    first = next(i for i, v in enumerate(f) if v >= 0.9)
    circuit = circuits[first]
    edges = set(circuit.to_dataframe()["edge"])
    assert k_edge in edges, (k_edge, sorted(edges))
    assert circuit.n_edges < 0.3 * graph.n_edges  # small: most of the graph is not needed
    # sufficiency: the second copy's loss with everything outside the circuit ablated stays near clean
    loss_circuit, loss_clean, loss_empty = -values[first].mean(), -clean.mean(), -empty
    assert loss_empty - loss_clean > 2.0
    assert loss_circuit - loss_clean < 0.1 * (loss_empty - loss_clean)


def test_acdc_finds_previous_token_to_induction_via_k(toy):
    """ACDC (task metric, tau 0.05) keeps the previous-token head -> induction head K edge,
    prunes most of the graph, and its circuit keeps the second copy's loss."""
    model, pairs = toy
    detectors = ms.head_scores(model, ms.repeated_random_tokens(24, batch=16, low=0, high=256, seed=123))
    prev = detectors.top(1, kind="previous_token").iloc[0]
    induction = detectors.top(1, kind="induction").iloc[0]
    k_edge = f"a{int(prev.layer)}.h{int(prev['head'])}->a{int(induction.layer)}.h{int(induction['head'])}<k>"
    circuit = C.acdc(model, pairs, 0.05, copy_logprob)
    graph = circuit.graph
    assert k_edge in set(circuit.to_dataframe()["edge"])
    assert circuit.n_edges < 0.3 * graph.n_edges
    values, clean = C.evaluate_circuits(model, graph, pairs, copy_logprob,
                                        [circuit.in_graph, torch.zeros_like(graph.real)])
    loss_circuit, loss_clean, loss_empty = -values[0].mean(), -clean.mean(), -values[1].mean()
    assert loss_circuit - loss_clean < 0.1 * (loss_empty - loss_clean)


def test_edge_pruning_finds_previous_token_to_induction_via_k(toy):
    """Edge pruning (task metric, 80% sparsity) keeps the previous-token head -> induction head
    K edge and its learned circuit keeps most of the second copy's log-probability."""
    model, pairs = toy
    detectors = ms.head_scores(model, ms.repeated_random_tokens(24, batch=16, low=0, high=256, seed=123))
    prev = detectors.top(1, kind="previous_token").iloc[0]
    induction = detectors.top(1, kind="induction").iloc[0]
    k_edge = f"a{int(prev.layer)}.h{int(prev['head'])}->a{int(induction.layer)}.h{int(induction['head'])}<k>"
    scores = C.edge_pruning(model, pairs, copy_logprob, sparsity=0.8, steps=300, progress=False)
    circuit = scores.threshold(0.0)
    graph = circuit.graph
    assert k_edge in set(circuit.to_dataframe()["edge"])
    assert circuit.n_edges <= 0.25 * graph.n_edges  # the sparsity target is met (about 22 of 110 edges)
    values, clean = C.evaluate_circuits(model, graph, pairs, copy_logprob,
                                        [circuit.in_graph, torch.zeros_like(graph.real)])
    f = (values[0].mean() - values[1].mean()) / (clean.mean() - values[1].mean())
    assert f >= 0.8
