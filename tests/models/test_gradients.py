"""Backward hooks and gradient caching on canonical names."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms


def _metric(logits):
    return logits[:, -1, 5].sum() - logits[:, -1, 7].sum()


def _reference_grad(model, tokens, name):
    """d metric / d activation, by adding a zero tensor that requires grad at ``name``."""
    holder = {}

    def add_delta(x, ctx):
        holder["delta"] = torch.zeros_like(x, requires_grad=True)
        return x + holder["delta"]

    with torch.enable_grad(), model.hooks({name: add_delta}):
        metric = _metric(model(tokens))
    return torch.autograd.grad(metric, holder["delta"])[0]


@pytest.mark.parametrize("name", ["blocks.0.resid_post", "blocks.1.attn.pattern", "blocks.1.attn.z", "embed",
                                  "blocks.0.mlp.post", "blocks.1.attn.q"])
def test_cached_gradients_match_autograd(tiny, name):
    model = tiny.model
    _, cache = model.run_with_cache(tiny.tokens, name, grad_metric=_metric)
    expected = _reference_grad(model, tiny.tokens, name)
    torch.testing.assert_close(cache.grads[name], expected, atol=1e-5, rtol=1e-4)
    assert cache.grads[name].abs().max() > 0


def test_gradient_at_every_layer_from_one_backward(tiny):
    model = tiny.model
    _, cache = model.run_with_cache(tiny.tokens, "blocks.*.resid_pre", grad_metric=_metric)
    for layer in range(model.cfg.n_layers):
        expected = _reference_grad(model, tiny.tokens, f"blocks.{layer}.resid_pre")
        torch.testing.assert_close(cache.grads[f"blocks.{layer}.resid_pre"], expected, atol=1e-5, rtol=1e-4)


def test_backward_hook_can_replace_the_gradient(tiny):
    model = tiny.model
    with model.hooks(backward={"blocks.1.resid_pre": lambda g, ctx: torch.zeros_like(g)}):
        _, cache = model.run_with_cache(tiny.tokens, "blocks.0.resid_pre", grad_metric=_metric)
    # Every path from blocks.0 to the logits goes through blocks.1.resid_pre.
    assert cache.grads["blocks.0.resid_pre"].abs().max() == 0


def test_backward_hooks_need_grad_mode(tiny):
    with tiny.model.hooks(backward={"blocks.0.resid_post": lambda g, ctx: None}):
        with pytest.raises(ms.MechscopeError, match="grad mode is off"):
            with torch.no_grad():
                tiny.model(tiny.tokens)


def test_frozen_parameters_for_activation_gradients(tiny):
    """``model.frozen()`` switches parameter gradients off for the block and back on after
    (only for those that had them), and activation gradients still flow; the circuit methods'
    backward passes use it, so they leave ``param.grad`` alone on an unfrozen model."""
    model = tiny.model
    params = list(model.hf.parameters())
    before = [p.requires_grad for p in params]
    assert any(before)  # the tiny fixtures wrap unfrozen HF models
    old = [None if p.grad is None else p.grad.clone() for p in params]  # earlier tests may have left some

    def untouched() -> bool:
        return all((a is None and p.grad is None) or (a is not None and p.grad is not None and torch.equal(a, p.grad))
                   for a, p in zip(old, params))

    grads = {}
    with model.frozen():
        assert not any(p.requires_grad for p in params)
        with torch.enable_grad(), model.hooks(backward={"blocks.0.resid_post": lambda g, ctx: grads.setdefault("g", g)}):
            model(tiny.tokens).float().logsumexp(-1).sum().backward()
    assert grads["g"].shape[:2] == tiny.tokens.shape
    assert [p.requires_grad for p in params] == before
    assert untouched()
    from mechscope.circuits import eap
    from mechscope.data.tasks import PromptPairs

    eap(model, PromptPairs(tiny.tokens, tiny.tokens.flip(0), tiny.tokens[:, 0], tiny.tokens[:, 1]))
    assert untouched()
