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
from mechscope.errors import CheckpointMismatchError, SelectionError


@pytest.fixture(scope="module")
def llama():
    return build_tiny("llama")


def _sequential(model, pairs, threshold, metric, higher_is_better, skip_unread=False, absolute=False):
    """Conmy et al.'s loop: one candidate removal per forward, decided before the next; with
    ``skip_unread``, edges into a node none of whose outgoing edges is kept go untested."""
    graph = Graph.from_model(model)
    keep = graph.real.clone()
    sign = -1.0 if higher_is_better else 1.0
    skipped = 0

    def value(mask):
        values, _ = evaluate_circuits(model, graph, pairs, metric, [mask], variants_per_pass=1)
        return float(values[0].mean())

    current = value(keep)
    for src, dst in acdc_order(graph):
        trial = keep.clone()
        trial[src, dst] = False
        unread = dst < graph.n_dst - 1 and not keep[graph.owner[:, dst]].any()
        if skip_unread and unread:
            keep, skipped = trial, skipped + 1
            continue
        new = value(trial)
        change = sign * (new - current)
        if (abs(change) if absolute else change) < threshold:
            keep, current = trial, new
    return keep, skipped


def _counts(circuit):
    """(edge evaluations, forwards, skipped edges) parsed from the circuit's selection string."""
    evaluations = int(circuit.selection.split("; ")[1].split(" edge evaluations")[0])
    forwards = int(circuit.selection.split(" in ")[1].split(" forwards")[0])
    skipped = int(circuit.selection.split("; ")[-1].split(" edges")[0])
    return evaluations, forwards, skipped


@pytest.mark.parametrize("threshold,task,absolute", [(0.02, False, False), (0.05, True, False), (0.05, True, True)])
def test_batched_acdc_equals_sequential_acdc(llama, threshold, task, absolute):
    model, pairs = llama.model, pairs_for(llama.tokens[:2])
    metric = logit_diff if task else kl_to(model(pairs.clean).detach(), pairs)
    circuit = acdc(model, pairs, threshold, metric if task else None, higher_is_better=task, absolute=absolute,
                   variants_per_pass=6, skip_unread=False, prune_dangling=False)
    reference, _ = _sequential(model, pairs, threshold, metric, task, absolute=absolute)
    assert torch.equal(circuit.in_graph, reference)
    n_edges = int(Graph.from_model(model).real.sum())
    assert 0 < int(reference.sum()) < n_edges  # the threshold removes some edges and keeps some
    _, forwards, skipped = _counts(circuit)
    assert forwards < n_edges and skipped == 0  # fewer forwards than one per edge
    if absolute:  # the two-sided rule keeps edges whose removal would raise the metric too
        one_sided, _ = _sequential(model, pairs, threshold, metric, task)
        assert int(reference.sum()) > int(one_sided.sum())


def test_skipping_unread_nodes_equals_sequential_skipping(llama):
    """Skipping edges into nodes nothing reads any more: the decisions of the sequential loop
    that skips them too, with some edges skipped, in fewer edge evaluations than without."""
    model, pairs = llama.model, pairs_for(llama.tokens[:2])
    metric = kl_to(model(pairs.clean).detach(), pairs)
    skipping = acdc(model, pairs, 0.05, variants_per_pass=6, prune_dangling=False)
    reference, reference_skipped = _sequential(model, pairs, 0.05, metric, False, skip_unread=True)
    assert torch.equal(skipping.in_graph, reference)
    evaluations, forwards, skipped = _counts(skipping)
    assert skipped == reference_skipped > 0
    assert int(torch.isnan(skipping.scores[Graph.from_model(model).real]).sum()) == skipped
    testing_all = acdc(model, pairs, 0.05, variants_per_pass=6, skip_unread=False, prune_dangling=False)
    all_evaluations, all_forwards, _ = _counts(testing_all)
    assert evaluations < all_evaluations and forwards <= all_forwards


def test_threshold_extremes(llama):
    model, pairs = llama.model, pairs_for(llama.tokens[:2])
    graph = Graph.from_model(model)
    everything = acdc(model, pairs, -1.0, prune_dangling=False)  # no removal worsens KL by < -1
    assert torch.equal(everything.in_graph, graph.real)
    nothing = acdc(model, pairs, float("inf"))
    assert not nothing.in_graph.any()
    tested = ~torch.isnan(everything.scores)
    assert torch.equal(tested, graph.real)  # every real edge was tested and its worsening recorded


def test_resumed_acdc_makes_the_decisions_of_an_uninterrupted_one(llama, tmp_path):
    model, pairs = llama.model, pairs_for(llama.tokens[:2])
    options = {"variants_per_pass": 6, "checkpoint_every": 40, "progress": False}
    whole = acdc(model, pairs, 0.05, **options)

    def kill(done):
        if done == 80:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        acdc(model, pairs, 0.05, out=tmp_path, on_checkpoint=kill, **options)
    resumed = acdc(model, pairs, 0.05, out=tmp_path, resume=True, **{**options, "variants_per_pass": 3})
    assert torch.equal(resumed.in_graph, whole.in_graph)
    assert torch.equal(resumed.scores.isnan(), whole.scores.isnan())
    tested = ~whole.scores.isnan()
    torch.testing.assert_close(resumed.scores[tested], whole.scores[tested], rtol=1e-5, atol=1e-7)
    assert _counts(resumed)[2] == _counts(whole)[2]  # the same edges skipped
    with pytest.raises(CheckpointMismatchError, match="threshold"):
        acdc(model, pairs, 0.07, out=tmp_path, resume=True, **options)


def test_bad_arguments(llama):
    pairs = pairs_for(llama.tokens[:2])
    with pytest.raises(SelectionError, match="ablation"):
        acdc(llama.model, pairs, 0.1, ablation="mean")
    with pytest.raises(SelectionError, match="variants_per_pass"):
        acdc(llama.model, pairs, 0.1, variants_per_pass=0)
    with pytest.raises(SelectionError, match="out folder"):
        acdc(llama.model, pairs, 0.1, resume=True)
