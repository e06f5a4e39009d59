"""ACDC: the speculative batched walk makes exactly the decisions of one-edge-at-a-time ACDC
(a plain sequential loop over `evaluate_circuits`, written here), in fewer forwards; the
thresholds' extremes keep everything or nothing."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny
from helpers import pairs_for

from mechscope.causal.metrics import kl_to, logit_diff
from mechscope.circuits import Graph, evaluate_circuits
from mechscope.circuits.acdc import acdc, acdc_order
from mechscope.errors import SelectionError


@pytest.fixture(scope="module")
def llama():
    return build_tiny("llama")


def _sequential(model, pairs, threshold, metric, higher_is_better):
    """Conmy et al.'s loop: one candidate removal per forward, decided before the next."""
    graph = Graph.from_model(model)
    keep = graph.real.clone()
    sign = -1.0 if higher_is_better else 1.0

    def value(mask):
        values, _ = evaluate_circuits(model, graph, pairs, metric, [mask], variants_per_pass=1)
        return float(values[0].mean())

    current = value(keep)
    for src, dst in acdc_order(graph):
        trial = keep.clone()
        trial[src, dst] = False
        new = value(trial)
        if sign * (new - current) < threshold:
            keep, current = trial, new
    return keep


@pytest.mark.parametrize("threshold,task", [(0.02, False), (0.05, True)])
def test_batched_acdc_equals_sequential_acdc(llama, threshold, task):
    model, pairs = llama.model, pairs_for(llama.tokens[:2])
    metric = logit_diff if task else kl_to(model(pairs.clean).detach(), pairs)
    circuit = acdc(model, pairs, threshold, metric if task else None, higher_is_better=task,
                   variants_per_pass=6, prune_dangling=False)
    reference = _sequential(model, pairs, threshold, metric, task)
    assert torch.equal(circuit.in_graph, reference)
    n_edges = int(Graph.from_model(model).real.sum())
    assert 0 < int(reference.sum()) < n_edges  # the threshold removes some edges and keeps some
    forwards = int(circuit.selection.split(" in ")[1].split(" forwards")[0])
    assert forwards < n_edges  # fewer forwards than one per edge


def test_threshold_extremes(llama):
    model, pairs = llama.model, pairs_for(llama.tokens[:2])
    graph = Graph.from_model(model)
    everything = acdc(model, pairs, -1.0, prune_dangling=False)  # no removal worsens KL by < -1
    assert torch.equal(everything.in_graph, graph.real)
    nothing = acdc(model, pairs, float("inf"))
    assert not nothing.in_graph.any()
    tested = ~torch.isnan(everything.scores)
    assert torch.equal(tested, graph.real)  # every real edge was tested and its worsening recorded


def test_bad_arguments(llama):
    pairs = pairs_for(llama.tokens[:2])
    with pytest.raises(SelectionError, match="ablation"):
        acdc(llama.model, pairs, 0.1, ablation="mean")
    with pytest.raises(SelectionError, match="variants_per_pass"):
        acdc(llama.model, pairs, 0.1, variants_per_pass=0)
