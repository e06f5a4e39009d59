"""Causal tracing on tiny random models: the batched sweep equals a one-cell-at-a-time loop,
and restorations that must give back the clean run do."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from mechscope.causal.tracing import (
    causal_trace,
    embedding_std,
    restored_probs,
    trace_noise,
    window_layers,
)
from mechscope.data.facts import FactPrompt
import mechscope as ms
from mechscope.errors import SelectionError

SUBJECT = [3, 4, 5]


def tiny_fact(tiny) -> FactPrompt:
    """Prompt 0 of the fixture; the 'attribute' is the clean run's second most likely next token."""
    tokens = tiny.tokens[0]
    with torch.no_grad():
        attribute = int(tiny.model(tokens[None])[0, -1].topk(2).indices[1])
    return FactPrompt("", "", "", tokens, torch.tensor(SUBJECT), attribute)


def clean_prob(model, fact) -> float:
    with torch.no_grad():
        return float(model(fact.tokens[None])[0, -1].softmax(-1)[fact.attribute_token])


def one_cell(model, fact, noise, cache, names, position) -> float:
    """The reference: one forward per cell, full logits, restoring ``names`` at ``position``
    with the clean activations of ``cache``."""
    rows = noise.shape[0]

    def add_noise(x, ctx):
        x = x.clone()
        x[:, SUBJECT] += noise
        return x

    def restore(x, ctx):
        x = x.clone()
        x[:, position] = cache[ctx.name][0, position]
        return x

    hooks = {"embed": add_noise, **{name: restore for name in names}}
    with torch.no_grad():
        logits = model.run_with_hooks(fact.tokens[None].repeat(rows, 1), hooks)
    return float(logits[:, -1].softmax(-1)[:, fact.attribute_token].mean())


def test_batched_trace_equals_one_cell_at_a_time(tiny):
    model, fact, window = tiny.model, tiny_fact(tiny), 2  # window 2: layer 0 alone, layer 1 with layer 0
    trace = causal_trace(model, fact, n_samples=3, window=window, seed=1, max_rows=7)  # 2 cells per forward
    noise = trace_noise(model, fact, n_samples=3, seed=1)
    cache = model.run_with_cache(fact.tokens[None])[1]
    suffix = {"resid": "resid_post", "mlp": "mlp.out", "attn": "attn.out"}
    n_layers, n_tokens = model.cfg.n_layers, len(fact.tokens)
    for kind, values in trace.scores.items():
        assert values.shape == (n_layers, n_tokens)
        expected = torch.tensor([[
            one_cell(model, fact, noise, cache,
                     [f"blocks.{l}.{suffix[kind]}" for l in ([layer] if kind == "resid" else
                                                            window_layers(layer, n_layers, window))], pos)
            for pos in range(n_tokens)] for layer in range(n_layers)])
        torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)
    assert trace.clean_prob == pytest.approx(clean_prob(model, fact), abs=1e-6)
    corrupted = one_cell(model, fact, noise, cache, [], 0)
    assert trace.corrupted_prob == pytest.approx(corrupted, abs=1e-5)
    assert abs(trace.corrupted_prob - trace.clean_prob) > 1e-4  # the noise does something


def test_no_noise_everything_is_clean(tiny):
    model, fact = tiny.model, tiny_fact(tiny)
    trace = causal_trace(model, fact, n_samples=2, noise_factor=0.0, window=3)
    assert trace.corrupted_prob == pytest.approx(trace.clean_prob, abs=1e-5)
    for values in trace.scores.values():
        torch.testing.assert_close(values, torch.full_like(values, trace.clean_prob), atol=1e-5, rtol=0)


def test_restorations_that_give_back_the_clean_run(tiny):
    model, fact = tiny.model, tiny_fact(tiny)
    n_layers, last = model.cfg.n_layers, len(fact.tokens) - 1
    clean = clean_prob(model, fact)
    trace = causal_trace(model, fact, ("resid",), n_samples=4)
    # The last block's output at the last token is what the logits are read from.
    assert float(trace.scores["resid"][-1, last]) == pytest.approx(clean, abs=1e-5)
    # The whole hidden state after any one block (all tokens) fixes everything downstream.
    noise = trace_noise(model, fact, n_samples=4)
    whole = [{f"blocks.{layer}.resid_post": range(last + 1)} for layer in range(n_layers)]
    torch.testing.assert_close(restored_probs(model, fact, whole, noise), torch.full((n_layers,), clean),
                               atol=1e-5, rtol=0)


def test_noise_is_seeded_and_scaled_like_the_embeddings(tiny):
    model, fact = tiny.model, tiny_fact(tiny)
    noise = trace_noise(model, fact, n_samples=50, noise_factor=3.0, seed=5)
    assert noise.shape == (50, len(SUBJECT), model.cfg.d_model)
    assert torch.equal(noise, trace_noise(model, fact, n_samples=50, noise_factor=3.0, seed=5))
    assert not torch.equal(noise, trace_noise(model, fact, n_samples=50, noise_factor=3.0, seed=6))
    embedded = model.run_with_cache(fact.tokens[None], names="embed")[1]["embed"][0]
    w_e = model.W_E.detach()
    scale = float(embedded.norm() / w_e[fact.tokens].norm())
    assert scale == pytest.approx(8.0 if tiny.family.startswith("gemma") else 1.0, rel=1e-4)  # Gemma: sqrt(d_model)
    assert embedding_std(model, fact.tokens) == pytest.approx(float(w_e.std()) * scale, rel=1e-5)
    assert float(noise.std()) == pytest.approx(3.0 * embedding_std(model, fact.tokens), rel=0.05)
    assert torch.equal(trace_noise(model, fact, n_samples=2, noise_std=0.5, noise_factor=2.0, seed=5),
                       trace_noise(model, fact, n_samples=2, noise_std=1.0, noise_factor=1.0, seed=5))


def test_window_layers_are_centred_and_clipped():
    assert list(window_layers(10, 30, 10)) == list(range(5, 15))
    assert list(window_layers(0, 30, 10)) == list(range(5))
    assert list(window_layers(29, 30, 10)) == list(range(24, 30))
    assert list(window_layers(4, 30, 1)) == [4]
    assert list(window_layers(4, 30, 3)) == [3, 4, 5]


def test_result_table_and_heatmap():
    tiny = build_tiny("llama")  # presentation does not depend on the family
    model, fact = tiny.model, tiny_fact(tiny)
    trace = causal_trace(model, fact, ("resid", "mlp"), n_samples=2)
    frame = trace.to_dataframe()
    n_layers, n_tokens = model.cfg.n_layers, len(fact.tokens)
    assert len(frame) == 2 * n_layers * n_tokens
    assert set(frame.kind) == {"resid", "mlp"} and frame.subject.sum() == 2 * n_layers * len(SUBJECT)
    row = frame[(frame.kind == "mlp") & (frame.layer == 1) & (frame.position == 4)].iloc[0]
    assert row.prob == pytest.approx(float(trace.scores["mlp"][1, 4]))
    assert row.indirect_effect == pytest.approx(row.prob - trace.corrupted_prob)
    layer, pos, prob = trace.peak("resid")
    assert prob == pytest.approx(float(trace.scores["resid"].max()))
    assert float(trace.scores["resid"][layer, pos]) == prob
    fig = trace.plot()
    assert len(fig.data) == 2 and fig.data[0].y[SUBJECT[0]].endswith("*") and len(trace.plot(kind="resid").data) == 1
    assert fig.data[0].z.shape == (n_tokens, n_layers)  # tokens x layers, as in ROME
    assert trace.top(1, kind="mlp")["indirect_effect"].iloc[0] == pytest.approx(
        float(trace.scores["mlp"].max()) - trace.corrupted_prob)
    with pytest.raises(SelectionError, match="not 'attn'"):
        trace.plot(kind="attn")


def test_bad_arguments_are_clear_errors():
    tiny = build_tiny("gpt2")  # argument checks do not depend on the family
    model, fact = tiny.model, tiny_fact(tiny)
    with pytest.raises(SelectionError, match="trace kinds are"):
        causal_trace(model, fact, ("resid", "heads"))
    with pytest.raises(SelectionError, match="window"):
        causal_trace(model, fact, window=0)
    with pytest.raises(SelectionError, match="n_samples"):
        causal_trace(model, fact, n_samples=0)
    outside = FactPrompt("", "", "", fact.tokens, torch.tensor([3, 12]), fact.attribute_token)
    with pytest.raises(SelectionError, match="subject positions"):
        causal_trace(model, outside)
    noise = trace_noise(model, fact, n_samples=2)
    with pytest.raises(SelectionError, match="noise must be"):
        restored_probs(model, fact, [{}], noise[:, :2])
    with pytest.raises(SelectionError, match="outside the 12-token prompt"):
        restored_probs(model, fact, [{"blocks.0.resid_post": [12]}], noise)
    with pytest.raises(SelectionError, match="block activations"):
        restored_probs(model, fact, [{"embed": [3]}], noise)


def test_patterns_name_what_is_restored(tiny):
    model, fact = tiny.model, tiny_fact(tiny)
    words = causal_trace(model, fact, ("resid", "mlp"), n_samples=2, window=2, seed=3)
    names = causal_trace(model, fact, ("blocks.*.resid_post", "blocks.*.mlp.out"), n_samples=2, window=2, seed=3)
    assert torch.equal(words.scores["resid"], names.scores["blocks.*.resid_post"])
    assert torch.equal(words.scores["mlp"], names.scores["blocks.*.mlp.out"])
    # a pattern for another block activation: resid_pre restored per layer, no window
    pre = causal_trace(model, fact, "blocks.*.resid_pre", n_samples=2, window=2, seed=3)
    noise = trace_noise(model, fact, n_samples=2, seed=3)
    cache = model.run_with_cache(fact.tokens[None])[1]
    expected = one_cell(model, fact, noise, cache, ["blocks.1.resid_pre"], 4)
    assert float(pre.scores["blocks.*.resid_pre"][1, 4]) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ms.UnknownActivationError, match="Closest valid names"):
        causal_trace(model, fact, "blocks.*.mlp.outt", n_samples=1)
    with pytest.raises(ms.SelectionError, match="every block"):
        causal_trace(model, fact, "blocks.0.mlp.out", n_samples=1)
    with pytest.raises(ms.SelectionError, match="layout"):
        causal_trace(model, fact, "blocks.*.attn.z", n_samples=1)
    with pytest.raises(ms.SelectionError, match="trace kinds"):
        causal_trace(model, fact, "mlps", n_samples=1)
