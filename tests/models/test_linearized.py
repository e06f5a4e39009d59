"""The model linearised at a prompt: patterns and norm scales frozen there. Checked against
what it claims: the recorded forward is reproduced bit for bit; with MLP outputs held fixed, the
final residual is affine in an intervention on the residual (superposition of two
interventions, scaling), which the unfrozen model is not; one backward gives those affine
coefficients exactly (compared with the finite difference of two forwards)."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms


def _held_mlps(model, tokens):
    """Hooks holding every MLP output at its value in the plain forward of ``tokens``."""
    _, cache = model.run_with_cache(tokens, names="blocks.*.mlp.out")
    return {f"blocks.{layer}.mlp.out": (lambda x, ctx, v=cache[f"blocks.{layer}.mlp.out"]: v.expand_as(x))
            for layer in range(model.cfg.n_layers)}


def _final(model, tokens, delta, held):
    """``ln_final.out`` `[b, p, d]` with ``delta`` added to ``blocks.0.resid_post`` (the logits
    of Gemma 2/3 pass a softcap, which is not linear)."""
    seen = {}
    hooks = {**held, "blocks.0.resid_post": lambda x, ctx: x + delta,
             "ln_final.out": lambda x, ctx: seen.setdefault("final", x)}
    with model.hooks(hooks):
        model(tokens)
    return seen["final"]


def test_the_recorded_forward_is_reproduced_exactly(tiny):
    model, tokens = tiny.model, tiny.tokens
    explicit, _ = model.run_with_cache(tokens, names="blocks.*.attn.pattern")  # the path a recording takes
    with model.linearized_at(tokens):
        frozen = model(tokens)
    assert torch.equal(frozen, explicit)
    torch.testing.assert_close(frozen, tiny.reference(tokens).logits, rtol=1e-4, atol=1e-4)


def test_held_mlps_make_the_residual_affine_in_an_intervention(tiny):
    model, tokens = tiny.model, tiny.tokens[:1]
    gen = torch.Generator().manual_seed(0)
    scale = 0.5 * model.run_with_cache(tokens, names="blocks.0.resid_post")[1]["blocks.0.resid_post"].std()
    a, b = (scale * torch.randn(1, tokens.shape[1], model.cfg.d_model, generator=gen) for _ in range(2))
    zero = torch.zeros_like(a)
    held = _held_mlps(model, tokens)

    def nonlinearity():
        base = _final(model, tokens, zero, held)
        fa, fb, fab = (_final(model, tokens, d, held) - base for d in (a, b, a + b))
        return (fab - fa - fb).abs().max() / fab.abs().max()

    with model.linearized_at(tokens):
        assert nonlinearity() < 1e-4
        base = _final(model, tokens, zero, held)
        torch.testing.assert_close(_final(model, tokens, 3 * a, held) - base,
                                   3 * (_final(model, tokens, a, held) - base), rtol=1e-4, atol=1e-4)
    assert nonlinearity() > 1e-3  # the unfrozen model is not affine: the check above has teeth


def test_one_backward_gives_the_affine_coefficients(tiny):
    model, tokens = tiny.model, tiny.tokens[:1]
    gen = torch.Generator().manual_seed(1)
    probe = torch.randn(model.cfg.d_model, generator=gen)
    delta = 0.3 * torch.randn(1, tokens.shape[1], model.cfg.d_model, generator=gen)
    held = _held_mlps(model, tokens)
    with model.linearized_at(tokens):
        leaf = torch.zeros_like(delta, requires_grad=True)
        final = _final(model, tokens, leaf, held)
        (grad,) = torch.autograd.grad(final[0, -1] @ probe, leaf)
        with torch.no_grad():
            change = (_final(model, tokens, delta, held) - _final(model, tokens, torch.zeros_like(delta), held))[0, -1]
    torch.testing.assert_close((grad * delta).sum(), change @ probe, rtol=1e-4, atol=1e-4)
    assert grad[0, -1].abs().sum() > 0 and grad[0, -3].abs().sum() > 0  # the last position reads earlier ones


def test_a_one_prompt_recording_serves_a_batch_of_copies(tiny):
    model, tokens = tiny.model, tiny.tokens[:1]
    with model.linearized_at(tokens):
        one = model(tokens)
        many = model(tokens.expand(4, -1))
    torch.testing.assert_close(many, one.expand(4, -1, -1), rtol=1e-5, atol=1e-5)


def test_norms_alone_leave_attention_live():
    from conftest import build_tiny

    model, tokens = (t := build_tiny("llama")).model, t.tokens[:1]
    held = _held_mlps(model, tokens)
    delta = torch.randn(1, tokens.shape[1], model.cfg.d_model, generator=torch.Generator().manual_seed(2))
    with model.linearized_at(tokens, attention=False):
        base = _final(model, tokens, torch.zeros_like(delta), held)
        once, twice = (_final(model, tokens, k * delta, held) - base for k in (1, 2))
    assert (twice - 2 * once).abs().max() > 1e-3 * twice.abs().max()  # the patterns moved


def test_other_prompts_and_nothing_frozen_are_refused():
    from conftest import build_tiny

    tiny = build_tiny("llama")
    model, tokens = tiny.model, tiny.tokens
    with model.linearized_at(tokens[:2]):
        with pytest.raises(ms.SelectionError, match="linearised at a prompt"):
            model(tokens[:2, :6])
        with pytest.raises(ms.SelectionError, match="linearised at a prompt"):
            model(tokens)  # 3 rows against a 2-prompt recording
    with pytest.raises(ms.SelectionError, match="freezes nothing"), model.linearized_at(tokens, attention=False,
                                                                                          norms=False):
        pass
    torch.testing.assert_close(model(tokens), tiny.reference(tokens).logits, rtol=1e-4, atol=1e-4)  # all removed
