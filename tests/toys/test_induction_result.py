"""Reproduce the seed result: a 2-layer attention-only transformer forms an induction circuit.

The toy is trained once (about 2.5 minutes on 2 CPU cores) and cached under
$MECHSCOPE_CACHE/toys, keyed by its config; later runs load it.
"""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.toys.induction import InductionToyConfig, cached_induction_model

SPAN = 24


@pytest.fixture(scope="module")
def toy():
    model = cached_induction_model(progress=False)
    tokens = ms.repeated_random_tokens(SPAN, batch=16, low=0, high=InductionToyConfig().d_vocab, seed=123)
    return model, tokens, ms.head_scores(model, tokens)


def _copy_losses(model, tokens, heads=()):
    hooks = {ms.at(f"blocks.{l}.attn.z", heads=h): (lambda z, ctx: torch.zeros_like(z)) for l, h in heads}
    with torch.no_grad(), model.hooks(hooks):
        logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    return loss[:, : SPAN - 1].mean().item(), loss[:, SPAN:].mean().item()


def test_second_copy_is_learned_in_context(toy):
    model, tokens, _ = toy
    first, second = _copy_losses(model, tokens)
    assert first > 4.0 and second < 0.5, (first, second)


def test_detectors_find_the_circuit_and_composition_links_it(toy):
    model, _, scores = toy
    induction_layer, induction_head, induction_score = scores.top(1, kind="induction").iloc[0][["layer", "head", "score"]]
    prev_layer, prev_head, prev_score = scores.top(1, kind="previous_token").iloc[0][["layer", "head", "score"]]
    assert induction_layer == 1 and induction_score > 0.4
    assert prev_layer == 0 and prev_score > 0.4
    k_comp = ms.composition_scores(model, "k")[0, :, 1, induction_head]  # from each layer-0 head
    assert int(k_comp.argmax()) == prev_head, k_comp


def test_ablating_the_induction_head_breaks_copying(toy):
    model, tokens, scores = toy
    _, clean = _copy_losses(model, tokens)
    layer, head = (int(v) for v in scores.top(1, kind="induction").iloc[0][["layer", "head"]])
    _, ablated = _copy_losses(model, tokens, [(layer, head)])
    top = scores.top(8, kind="induction")
    strong = [(int(l), int(h)) for l, h, s in zip(top.layer, top["head"], top.score) if s > 0.4]
    _, all_ablated = _copy_losses(model, tokens, strong)
    assert ablated > 4 * clean and all_ablated > 3.0, (clean, ablated, all_ablated)
