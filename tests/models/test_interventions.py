"""Hooks that change activations change exactly what they should."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms

ATOL = 1e-5


def _module_hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())


def test_zeroing_one_head_removes_exactly_its_contribution(tiny):
    model, layer, head = tiny.model, 1, 2
    _, clean = model.run_with_cache(tiny.tokens)

    def zero(z, ctx):
        z[:, :, head] = 0

    _, patched = _run_cached(model, tiny.tokens, {f"blocks.{layer}.attn.z": zero})
    assert torch.equal(patched["blocks.0.resid_post"], clean["blocks.0.resid_post"])  # upstream untouched
    heads = clean[f"blocks.{layer}.attn.head_out"]
    z = patched[f"blocks.{layer}.attn.z"]
    assert z[:, :, head].abs().max() == 0
    if model.adapter.attn_out_norm is None:
        expected = clean[f"blocks.{layer}.attn.out"] - heads[:, :, head]
        torch.testing.assert_close(patched[f"blocks.{layer}.attn.out"], expected, atol=ATOL, rtol=0)
        kept = [h for h in range(model.cfg.n_heads) if h != head]
        torch.testing.assert_close(patched[f"blocks.{layer}.attn.head_out"][:, :, kept], heads[:, :, kept],
                                   atol=ATOL, rtol=0)
    else:  # a post-norm renormalises the remaining heads
        norm = model.hf.get_submodule(f"{model.adapter.layers}.{layer}.{model.adapter.attn_out_norm}")
        expected = norm(torch.einsum("bphe,hed->bpd", z, model.W_O[layer]))
        torch.testing.assert_close(patched[f"blocks.{layer}.attn.out"], expected, atol=ATOL, rtol=0)


def test_head_target_equals_manual_slicing(tiny):
    model = tiny.model
    with torch.no_grad():
        manual = model.run_with_hooks(tiny.tokens, {"blocks.1.attn.z": lambda z, ctx: _zero_head(z, 3)})
        targeted = model.run_with_hooks(tiny.tokens, {ms.at("blocks.1.attn.z", heads=3): lambda z, ctx: torch.zeros_like(z)})
        clean = model(tiny.tokens)
    assert torch.equal(manual, targeted)
    assert not torch.allclose(manual, clean)


def _zero_head(z, head):
    z = z.clone()
    z[:, :, head] = 0
    return z


def test_position_target_only_changes_later_positions(tiny):
    model = tiny.model
    delta = torch.randn(model.cfg.d_model)
    with torch.no_grad():
        clean = model(tiny.tokens)
        patched = model.run_with_hooks(tiny.tokens, {ms.at("blocks.0.resid_post", positions=5): lambda x, ctx: x + delta})
    assert torch.equal(patched[:, :5], clean[:, :5])
    assert (patched[:, 5] - clean[:, 5]).abs().max() > 1e-4  # (sliding windows hide it from far positions)


def test_per_prompt_positions(tiny):
    model = tiny.model
    positions = ms.PerPrompt([3, 7, 11])
    _, cache = model.run_with_cache(tiny.tokens, "blocks.1.resid_post", positions=positions)
    _, full = model.run_with_cache(tiny.tokens, "blocks.1.resid_post")
    picked = cache["blocks.1.resid_post"]
    assert picked.shape == (3, model.cfg.d_model)
    for i, p in enumerate([3, 7, 11]):
        assert torch.equal(picked[i], full["blocks.1.resid_post"][i, p])


def test_patching_each_name_alone_takes_effect(tiny):
    """Every name, patched alone from another run, holds the patched value and changes the
    logits; a complete residual state (resid_pre/resid_post/ln_final.out) alone reproduces the
    source run's logits. (Patching all names at once could not show a patch that fails to
    apply: the last residual patch alone would fix the logits.)"""
    model = tiny.model
    source_tokens = torch.flip(tiny.tokens, dims=[1])
    with torch.no_grad():
        clean_logits, clean = model.run_with_cache(tiny.tokens, model.names)  # split inputs included
        source_logits, source = model.run_with_cache(source_tokens, model.names)
        for name in model.names:
            if name == "logits":
                continue
            with model.hooks({name: lambda x, ctx: source[ctx.name]}):
                logits, seen = model.run_with_cache(tiny.tokens, name)
            assert torch.equal(seen[name], source[name]), name
            complete = name.endswith(("resid_pre", "resid_post")) or name == "ln_final.out"
            if complete:
                torch.testing.assert_close(logits, source_logits, atol=ATOL, rtol=0, msg=name)
            elif not torch.equal(source[name], clean[name]):  # pos_embed is the same for both runs
                assert not torch.allclose(logits, clean_logits, atol=ATOL, rtol=0), f"patching {name} had no effect"


def test_patching_resid_mid_changes_the_residual_too(tiny):
    """resid_mid is written in place: the MLP and the residual both see the new value."""
    model = tiny.model
    if model.cfg.parallel_attn_mlp:
        pytest.skip("parallel blocks have no resid_mid")
    delta = torch.randn(model.cfg.d_model)
    _, patched = _run_cached(model, tiny.tokens, {"blocks.0.resid_mid": lambda x, ctx: x + delta})
    _, clean = model.run_with_cache(tiny.tokens)
    torch.testing.assert_close(patched["blocks.0.resid_mid"], clean["blocks.0.resid_mid"] + delta, atol=ATOL, rtol=0)
    torch.testing.assert_close(patched["blocks.0.resid_post"],
                               patched["blocks.0.resid_mid"] + patched["blocks.0.mlp.out"], atol=ATOL, rtol=0)


def test_editing_head_out_rewrites_attention_output(tiny):
    model = tiny.model
    _, clean = model.run_with_cache(tiny.tokens)
    _, patched = _run_cached(model, tiny.tokens, {ms.at("blocks.0.attn.head_out", heads=1): lambda x, ctx: 2 * x})
    heads = clean["blocks.0.attn.head_out"]
    bias = model.b_O[0] if model.adapter.attn_out_norm is None else 0
    expected = heads.sum(2) + heads[:, :, 1] + bias
    torch.testing.assert_close(patched["blocks.0.attn.out"], expected, atol=ATOL, rtol=0)


def test_pattern_edit_flows_to_z(tiny):
    model = tiny.model
    uniform = torch.tril(torch.ones(12, 12))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    _, cache = _run_cached(model, tiny.tokens, {"blocks.0.attn.pattern": lambda p, ctx: uniform.expand_as(p).clone()})
    groups = model.cfg.n_heads // model.cfg.n_kv_heads
    v = cache["blocks.0.attn.v"].repeat_interleave(groups, dim=2)
    torch.testing.assert_close(cache["blocks.0.attn.z"], torch.einsum("qk,bkhd->bqhd", uniform, v), atol=ATOL, rtol=0)


def test_hooks_are_removed_on_exception(tiny):
    model = tiny.model
    before = _module_hook_count(model)
    with torch.no_grad():
        clean = model(tiny.tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks({"blocks.*.resid_post": lambda x, ctx: x * 0, "blocks.0.attn.pattern": lambda x, ctx: None}):
            assert _module_hook_count(model) > before
            raise RuntimeError("boom")
    assert _module_hook_count(model) == before
    assert not model._runtime.entries
    with pytest.raises(ValueError, match="inside"):
        with model.hooks({"blocks.0.resid_post": _raise}):
            with torch.no_grad():
                model(tiny.tokens)
    assert _module_hook_count(model) == before
    with torch.no_grad():
        assert torch.equal(model(tiny.tokens), clean)


def _raise(x, ctx):
    raise ValueError("inside a hook")


def test_nested_contexts_compose_in_order(tiny):
    model = tiny.model
    seen = []
    with model.hooks({"blocks.0.resid_post": lambda x, ctx: seen.append("outer") or x + 1}):
        with model.hooks({"blocks.0.resid_post": lambda x, ctx: seen.append("inner") or x * 2}):
            _, cache = model.run_with_cache(tiny.tokens, "blocks.0.resid_post")
        _, outer_only = model.run_with_cache(tiny.tokens, "blocks.0.resid_post")
    _, clean = model.run_with_cache(tiny.tokens, "blocks.0.resid_post")
    assert seen[:2] == ["outer", "inner"]
    x = clean["blocks.0.resid_post"]
    torch.testing.assert_close(cache["blocks.0.resid_post"], (x + 1) * 2)
    torch.testing.assert_close(outer_only["blocks.0.resid_post"], x + 1)


def test_no_hooks_installed_after_plain_forward(tiny):
    assert _module_hook_count(tiny.model) == 0
    tiny.model.run_with_cache(tiny.tokens, "blocks.*.resid_post")
    assert _module_hook_count(tiny.model) == 0


def _run_cached(model, tokens, hooks):
    with model.hooks(hooks):
        return model.run_with_cache(tokens)
