"""Feature interventions against independent references: with nothing edited the real and the
replacement model give the clean logits (the replacement through its error terms); in the
real model an edit adds exactly (new - old) * W_dec to its MLP output (compared with a plain
hook); in the constrained, attention-frozen replacement model zeroing a feature changes each
logit by exactly minus its edge in the attribution graph; generation carries the edit."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

import mechscope as ms


@pytest.fixture(scope="module")
def setup():
    tiny = build_tiny("llama")
    model, tokens = tiny.model, tiny.tokens[:1, :9]
    transcoders = ms.TranscoderSet.fresh(model, d_sae=24, k=3, skip_connection=True, seed=0)
    with torch.no_grad():
        for tc in transcoders:
            tc.W_skip.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    graph = ms.attribution_graph(model, transcoders, tokens, max_logits=3, logit_prob=1.0, progress=False)
    return model, tokens, transcoders, graph


def test_no_edit_is_the_clean_model(setup):
    model, tokens, transcoders, _ = setup
    clean = model(tokens)[0]
    for replacement in (False, True):
        out = ms.feature_intervention(model, transcoders, tokens, [], replacement=replacement)
        torch.testing.assert_close(out.logits, clean, rtol=1e-4, atol=1e-4)
    acts = ms.feature_activations(model, transcoders, tokens)
    assert acts.shape == (2, 9, 24) and not acts[:, 0].any() and ((acts != 0).sum(-1)[:, 1:] <= 3).all()


def test_a_real_model_edit_adds_its_decoder_row(setup):
    model, tokens, transcoders, _ = setup
    acts = ms.feature_activations(model, transcoders, tokens)
    position, latent = 4, int(acts[0, 4].argmax())
    out = ms.feature_intervention(model, transcoders, tokens, [(0, position, latent, 5.0)])
    change = (5.0 - acts[0, position, latent]) * transcoders[0].W_dec[latent].detach()

    def add(x, ctx):
        x = x.clone()
        x[:, position] += change
        return x

    with model.hooks({"blocks.0.mlp.out": add}), torch.no_grad():
        expected = model(tokens)[0]
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
    assert out.activations[0, position, latent] == 5.0


def test_constrained_frozen_edits_follow_the_graph(setup):
    model, tokens, transcoders, graph = setup
    node = int(graph.adjacency[graph.first_logit:, : graph.n_features].abs().sum(0).argmax())  # a feature reaching logits
    layer, position, latent = graph.feature_index[node].tolist()
    base = ms.feature_intervention(model, transcoders, tokens, [], replacement=True, constrained=True,
                                   freeze_attention=True).logits[-1]
    zeroed = ms.feature_intervention(model, transcoders, tokens, [(layer, position, latent, 0.0)], replacement=True,
                                     constrained=True, freeze_attention=True).logits[-1]
    for j, token in enumerate(graph.logit_tokens.tolist()):
        measured = (zeroed[token] - zeroed.mean()) - (base[token] - base.mean())
        edge = graph.adjacency[graph.logit_node(j), node]
        assert abs(float(measured + edge)) <= 1e-4 * max(1.0, float(edge.abs())), (j, measured, edge)
    assert graph.adjacency[graph.first_logit:, node].abs().max() > 1e-3  # a real effect


def test_generation_carries_the_edit(setup):
    model, tokens, transcoders, _ = setup
    plain = ms.generate_with_features(model, transcoders, tokens, [], max_new_tokens=4)
    assert torch.equal(torch.as_tensor(plain), model.generate(tokens, 4, return_tokens=True)[0])
    acts = ms.feature_activations(model, transcoders, tokens)
    last = tokens.shape[1] - 1
    edits = [(1, last, int(acts[1, last].argmax()), 200.0)]
    steered = ms.generate_with_features(model, transcoders, tokens, edits, max_new_tokens=4)
    first = int(ms.feature_intervention(model, transcoders, tokens, edits).logits[-1].argmax())
    assert int(torch.as_tensor(steered)[tokens.shape[1]]) == first  # the first new token is the edited forward's


def test_bad_edits_are_refused(setup):
    model, tokens, transcoders, _ = setup
    for edit, match in [((5, 1, 0, 1.0), "no transcoder"), ((0, 0, 0, 1.0), "position 0"), ((0, 1, 99, 1.0), "latent"),
                        ((0, 1, 0), "layer, position, latent, value")]:
        with pytest.raises(ms.SelectionError, match=match):
            ms.feature_intervention(model, transcoders, tokens, [edit])
    with pytest.raises(ms.SelectionError, match="replacement=True"):
        ms.feature_intervention(model, transcoders, tokens, [], constrained=True)
