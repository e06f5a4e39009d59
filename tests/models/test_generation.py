"""generate() keeps hooks active at every step."""

from __future__ import annotations

import torch


def test_logits_hook_steers_every_generated_token(tiny):
    model = tiny.model

    def force(logits, ctx):
        logits = torch.full_like(logits, -1e4)
        logits[..., 11] = 0
        return logits

    with model.hooks({"logits": force}):
        out = model.generate(tiny.tokens[:1, :4], max_new_tokens=5)
    assert out.shape == (1, 9)
    assert out[0, 4:].tolist() == [11] * 5


def test_residual_hook_fires_at_each_step_and_changes_output(tiny):
    model = tiny.model
    calls = []
    plain = model.generate(tiny.tokens[:1, :4], max_new_tokens=4)

    def push(x, ctx):
        calls.append(x.shape[1])
        return x + 25.0 * torch.linspace(-1, 1, x.shape[-1])

    with model.hooks({"blocks.0.resid_post": push}):
        steered = model.generate(tiny.tokens[:1, :4], max_new_tokens=4)
    assert calls[0] == 4 and calls[1:] == [1, 1, 1]  # prompt, then one new position per step (KV cache)
    assert not torch.equal(plain, steered)


def test_generation_with_cache_equals_full_recompute(tiny):
    """Greedy tokens with the KV cache equal argmax of a full forward over the result."""
    model = tiny.model
    out = model.generate(tiny.tokens[:1, :4], max_new_tokens=4)
    with torch.no_grad():
        logits = model(out[:, :-1])
    assert torch.equal(logits[0, 3:].argmax(-1), out[0, 4:])
