"""Edge pruning: the hard-concrete gates against their closed forms, exact resume, the
learned-logit ranking, and (in test_induction_circuit.py) the circuit it finds on the toy."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny
from helpers import pairs_for

import mechscope.circuits as C
from mechscope.causal.metrics import logit_diff
from mechscope.circuits.faithfulness import rankings
from mechscope.errors import MechscopeError
from mechscope.training import checkpoint_history


def test_open_probability_is_the_gates_monte_carlo_rate():
    log_alpha = torch.tensor([-3.0, -1.0, 0.0, 1.5, 4.0]).repeat_interleave(40_000)
    z = C.sample_gates(log_alpha, torch.Generator().manual_seed(0)).reshape(5, -1)
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0  # the stretch reaches both ends exactly
    expected = C.open_probability(torch.tensor([-3.0, -1.0, 0.0, 1.5, 4.0]))
    assert torch.allclose((z > 0).float().mean(1), expected, atol=0.01)


def test_deterministic_gates():
    gates = C.deterministic_gates(torch.tensor([-10.0, 0.0, 10.0]))
    assert gates.tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_gates_are_differentiable():
    log_alpha = torch.zeros(1000, requires_grad=True)
    C.sample_gates(log_alpha, torch.Generator().manual_seed(1)).sum().backward()
    assert bool((log_alpha.grad >= 0).all()) and float(log_alpha.grad.sum()) > 0


@pytest.fixture(scope="module")
def tiny():
    built = build_tiny("llama")
    return built.model, pairs_for(built.tokens)


def test_resumed_run_ends_where_an_uninterrupted_one_does(tiny, tmp_path):
    model, pairs = tiny
    options = {"sparsity": 0.5, "steps": 12, "batch_size": 2, "checkpoint_every": 5, "progress": False}
    whole = C.edge_pruning(model, pairs, logit_diff, **options)

    class Killed(Exception):
        pass

    def kill(step: int) -> None:
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        C.edge_pruning(model, pairs, logit_diff, out=tmp_path, on_checkpoint=kill, **options)
    resumed = C.edge_pruning(model, pairs, logit_diff, out=tmp_path, resume=True, **options)
    assert torch.equal(resumed.scores, whole.scores)
    assert checkpoint_history(tmp_path / "checkpoint.safetensors") == (12, [[0, 5], [5, 12]])
    assert not torch.equal(whole.scores, torch.full_like(whole.scores, 3.0) * whole.graph.real)  # it trained


def test_result_is_learned_logits_ranked_by_value(tiny, tmp_path):
    model, pairs = tiny
    scores = C.edge_pruning(model, pairs, sparsity=0.6, steps=30, lr=0.2, progress=False)  # KL objective
    graph = scores.graph
    assert scores.score_kind == "keep" and scores.method == "edge-pruning" and scores.metric == "kl"
    assert scores.clean_metric == 0.0 and scores.corrupted_metric > 0
    assert bool((scores.scores[~graph.real] == 0).all())
    learned = scores.threshold(0.0, prune=False)
    assert learned.in_graph.equal(graph.real & (scores.scores >= 0))
    top = scores.top_n(10)  # absolute=True is ignored for keep logits: the largest logits
    assert float(scores.scores[top.in_graph].min()) >= float(scores.scores[graph.real & ~top.in_graph].max())
    orders = rankings(graph, scores.scores, score_kind="keep")
    assert orders["signed"].equal(orders["absolute"])
    flat = scores.scores.flatten()[orders["signed"]]
    assert bool((flat[:-1] >= flat[1:]).all())
    back = C.CircuitScores.load(scores.save(tmp_path / "pruned.safetensors"))
    assert back.score_kind == "keep" and back.scores.equal(scores.scores)


def test_bad_settings_raise(tiny):
    model, pairs = tiny
    with pytest.raises(MechscopeError, match="sparsity"):
        C.edge_pruning(model, pairs, sparsity=1.0, steps=1, progress=False)
    with pytest.raises(MechscopeError, match="out folder"):
        C.edge_pruning(model, pairs, steps=1, resume=True, progress=False)
    with pytest.raises(MechscopeError, match="score_kind"):
        C.CircuitScores({"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": False, "d_model": 4}, "edge",
                        torch.zeros(3, 4), "x", "m", "corrupted", score_kind="odd")
