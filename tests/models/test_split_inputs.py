"""Split inputs (attn.q_input / k_input / v_input per head, mlp.in): the residual each head and
each MLP reads, as hook points. Checked against independent references on every family."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

import mechscope as ms

ATOL = 1e-5
LAYER = 1
SPLIT = ["attn.q_input", "attn.k_input", "attn.v_input"]
PART_NAME = {"q": "attn.q", "k": "attn.k", "v": "attn.v"}


def _names(layer: int, suffixes) -> list[str]:
    return [f"blocks.{layer}.{s}" for s in suffixes]


def _source(tiny) -> torch.Tensor:
    """x': the residual entering layer 1 on another prompt (the tokens reversed)."""
    with torch.no_grad():
        _, cache = tiny.model.run_with_cache(torch.flip(tiny.tokens, dims=[1]), f"blocks.{LAYER}.resid_pre")
    return cache[f"blocks.{LAYER}.resid_pre"]


def _recorded(model, names: list[str], run):
    """Run ``run()`` with recorders on ``names``; returns (its result, {name: tensor})."""
    store: dict[str, torch.Tensor] = {}
    with model.hooks({n: (lambda x, ctx: store.__setitem__(ctx.name, x.detach().clone())) for n in names}), torch.no_grad():
        out = run()
    return out, store


def _mlp_reads(model, layer: int) -> str:
    return f"blocks.{layer}.resid_pre" if model.cfg.parallel_attn_mlp else f"blocks.{layer}.resid_mid"


# --------------------------------------------------------------------------- names and values
def test_points_exist_with_their_layouts(tiny):
    model = tiny.model
    cfg = model.cfg
    for layer in range(cfg.n_layers):
        q, k, v, mlp_in = model.hook_points(_names(layer, [*SPLIT, "mlp.in"]))
        assert (q.layout, q.n_heads, q.width) == ("bphd", cfg.n_heads, cfg.d_model)
        assert (k.layout, k.n_heads, k.width) == (v.layout, v.n_heads, v.width) == ("bphd", cfg.n_kv_heads, cfg.d_model)
        assert (mlp_in.layout, mlp_in.width, mlp_in.n_heads) == ("bpd", cfg.d_model, None)


def test_nothing_installed_unless_asked(tiny):
    """No split point active: no module hook anywhere, logits are HF's bit for bit."""
    model = tiny.model
    with model.hooks({"blocks.*.resid_pre": lambda x, ctx: None}):
        kinds = {key[1] for key in model._runtime._handles}
        assert "split" not in kinds and "stash" not in kinds
        with torch.no_grad():
            assert torch.equal(model(tiny.tokens), tiny.reference(tiny.tokens).logits)
    with torch.no_grad():
        model.run_with_cache(tiny.tokens, "blocks.*.attn.*_input")
    assert not model._runtime._handles and not model._runtime._resid_stash


def test_identity_hooks_keep_logits_and_values(tiny):
    """Activated (hooked, cached, differentiated): logits unchanged, q/k/v inputs are resid_pre
    per head, mlp.in is the residual the MLP reads."""
    model = tiny.model
    with torch.no_grad():
        plain = model(tiny.tokens)
    names = ["blocks.*.attn.*_input", "blocks.*.mlp.in", "blocks.*.resid_pre", "blocks.*.resid_mid"]
    names = [n for n in names if not (model.cfg.parallel_attn_mlp and n.endswith("resid_mid"))]
    with model.hooks({"blocks.*.attn.*_input": lambda x, ctx: x * 1, "blocks.*.mlp.in": lambda x, ctx: x * 1}), torch.no_grad():
        logits, cache = model.run_with_cache(tiny.tokens, names)
    assert torch.equal(logits, plain)  # unchanged values keep the model's own projections
    # gradients force the per-head recomputation: same logits to float rounding
    grad_logits, grad_cache = model.run_with_cache(tiny.tokens, names, grad_metric=lambda lg: lg[:, -1].sum())
    torch.testing.assert_close(grad_logits, plain, atol=ATOL, rtol=0)
    for layer in range(model.cfg.n_layers):
        resid = cache[f"blocks.{layer}.resid_pre"]
        for suffix in SPLIT:
            x = cache[f"blocks.{layer}.{suffix}"]
            assert torch.equal(x, resid[:, :, None].expand_as(x)), suffix
            assert grad_cache.grads[f"blocks.{layer}.{suffix}"].abs().sum() > 0, suffix
        assert torch.equal(cache[f"blocks.{layer}.mlp.in"], cache[_mlp_reads(model, layer)])


def test_editing_mlp_in_leaves_the_residual(tiny):
    """Unlike resid_mid, an edit of mlp.in (in place, too) reaches the MLP only."""
    model = tiny.model
    delta = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    reads = _mlp_reads(model, 0)
    with torch.no_grad():
        _, clean = model.run_with_cache(tiny.tokens, [reads, "blocks.0.mlp.out", "blocks.0.resid_post"])
    with model.hooks({"blocks.0.mlp.in": lambda x, ctx: [x.add_(delta), None][1]}), torch.no_grad():
        _, edited = model.run_with_cache(tiny.tokens, [reads, "blocks.0.mlp.in", "blocks.0.mlp.out",
                                                       "blocks.0.resid_post"])
    assert torch.equal(edited[reads], clean[reads])
    torch.testing.assert_close(edited["blocks.0.mlp.in"], clean[reads] + delta)
    assert not torch.allclose(edited["blocks.0.mlp.out"], clean["blocks.0.mlp.out"], atol=1e-3)
    torch.testing.assert_close(edited["blocks.0.resid_post"] - clean["blocks.0.resid_post"],
                               edited["blocks.0.mlp.out"] - clean["blocks.0.mlp.out"], atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- one head vs a reference
def _projection_slice_reference(model, part: str, head: int, xp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """OLMo 2 (one q/k norm over all heads): logits with head ``head``'s slice of the q/k
    projection output replaced by the HF projection of x' (the norm then sees the assembled
    output), via a plain PyTorch hook on the HF module."""
    module = model.hf.get_submodule(f"{model.adapter.layers}.{LAYER}.self_attn.{part}_proj")
    d_head = model.cfg.d_head
    cols = slice(head * d_head, (head + 1) * d_head)
    with torch.no_grad():
        replacement = module(xp)[..., cols]

    def swap(mod, args, out):
        out = out.clone()
        out[..., cols] = replacement
        return out

    handle = module.register_forward_hook(swap)
    try:
        with torch.no_grad():
            return model(tokens)
    finally:
        handle.remove()


@pytest.mark.parametrize("part", ["q", "k", "v"])
def test_one_head_input_equals_patching_that_heads_projection(tiny, part):
    """Head h's {q,k,v}_input := x' equals replacing head h's attn.{q,k,v} (post norm and rotary)
    by that head's attn.{q,k,v} from a run of the layer on x' (run_from), others untouched."""
    model = tiny.model
    n = model.cfg.n_heads if part == "q" else model.cfg.n_kv_heads
    head = 1 if n > 1 else 0
    xp = _source(tiny)
    split = f"blocks.{LAYER}.attn.{part}_input"
    with torch.no_grad():
        clean = model(tiny.tokens)
    with model.hooks({ms.at(split, heads=head): lambda x, ctx: xp}):
        patched, seen = _recorded(model, [split], lambda: model(tiny.tokens))
    assert torch.equal(seen[split][:, :, head], xp)
    assert not torch.allclose(patched, clean, atol=1e-3), "the split input had no effect"
    if model.cfg.qk_norm == "full" and part in ("q", "k"):
        reference = _projection_slice_reference(model, part, head, xp, tiny.tokens)
    else:
        target = f"blocks.{LAYER}.{PART_NAME[part]}"
        _, on_xp = _recorded(model, [target], lambda: model.run_from(LAYER, xp, tiny.tokens))
        with model.hooks({ms.at(target, heads=head): lambda x, ctx: on_xp[target][:, :, head]}), torch.no_grad():
            reference = model(tiny.tokens)
    torch.testing.assert_close(patched, reference, atol=ATOL, rtol=0)


def test_mlp_in_equals_patching_the_mlp_output(tiny):
    """mlp.in := x' equals replacing mlp.out by the MLP applied to x' (recorded in a run whose
    MLP reads x': resid_mid := x' for sequential blocks, run_from(x') for parallel ones)."""
    model = tiny.model
    xp = _source(tiny)
    out = f"blocks.{LAYER}.mlp.out"
    with model.hooks({f"blocks.{LAYER}.mlp.in": lambda x, ctx: xp}):
        patched, seen = _recorded(model, [out, _mlp_reads(model, LAYER)], lambda: model(tiny.tokens))
    _, clean = _recorded(model, [_mlp_reads(model, LAYER)], lambda: model(tiny.tokens))
    assert torch.equal(seen[_mlp_reads(model, LAYER)], clean[_mlp_reads(model, LAYER)])  # residual untouched
    if model.cfg.parallel_attn_mlp:
        _, on_xp = _recorded(model, [out], lambda: model.run_from(LAYER, xp, tiny.tokens))
    else:
        with model.hooks({f"blocks.{LAYER}.resid_mid": lambda x, ctx: xp}):
            _, on_xp = _recorded(model, [out], lambda: model(tiny.tokens))
    torch.testing.assert_close(seen[out], on_xp[out], atol=ATOL, rtol=0)
    with model.hooks({out: lambda x, ctx: on_xp[out]}), torch.no_grad():
        reference = model(tiny.tokens)
    torch.testing.assert_close(patched, reference, atol=ATOL, rtol=0)


def test_all_heads_on_x_prime_equal_the_attention_on_x_prime(tiny):
    """Every q, k and v input := x' gives the attention output of the layer run on x' (also
    under OLMo 2's full-width q/k norms): the split is consistent with the unsplit model."""
    model = tiny.model
    xp = _source(tiny)
    name = f"blocks.{LAYER}.attn.out"
    with model.hooks({f"blocks.{LAYER}.attn.*_input": lambda x, ctx: xp[:, :, None].expand_as(x)}):
        _, split = _recorded(model, [name], lambda: model(tiny.tokens))
    _, on_xp = _recorded(model, [name], lambda: model.run_from(LAYER, xp, tiny.tokens))
    torch.testing.assert_close(split[name], on_xp[name], atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- gradients
def _metric(logits: torch.Tensor) -> torch.Tensor:
    weights = torch.linspace(-1, 1, logits.shape[-1])
    return (logits[:, -1].log_softmax(-1) * weights).sum()


def test_gradient_sum_rule(tiny):
    """The split gradients add up to the gradient through the branch that reads the residual:
    sequential: dm/d resid_pre - dm/d resid_mid = sum over heads of q + k + v input gradients,
    dm/d resid_mid - dm/d resid_post = dm/d mlp.in; parallel: dm/d resid_pre - dm/d resid_post =
    all of them. resid_pre's gradient equals the unsplit model's."""
    model = tiny.model
    layer = 0
    residuals = ["resid_pre", "resid_post"] if model.cfg.parallel_attn_mlp else ["resid_pre", "resid_mid", "resid_post"]
    _, plain = model.run_with_cache(tiny.tokens, _names(layer, residuals), grad_metric=_metric)
    _, cache = model.run_with_cache(tiny.tokens, _names(layer, [*residuals, *SPLIT, "mlp.in"]), grad_metric=_metric)
    g = {s: cache.grads[f"blocks.{layer}.{s}"] for s in [*residuals, *SPLIT, "mlp.in"]}
    attention = sum(g[s].sum(dim=2) for s in SPLIT)
    scale = g["resid_pre"].abs().max()
    tol = {"atol": 1e-5 * float(scale), "rtol": 1e-4}
    torch.testing.assert_close(g["resid_pre"], plain.grads[f"blocks.{layer}.resid_pre"], **tol)
    if model.cfg.parallel_attn_mlp:
        torch.testing.assert_close(g["resid_pre"] - g["resid_post"], attention + g["mlp.in"], **tol)
    else:
        torch.testing.assert_close(g["resid_pre"] - g["resid_mid"], attention, **tol)
        torch.testing.assert_close(g["resid_mid"] - g["resid_post"], g["mlp.in"], **tol)
    for s in SPLIT:
        assert (g[s].abs().sum(dim=(0, 1, 3)) > 0).all(), s  # every head has a gradient


# LayerNorm families run in float64 throughout (5-point stencil: O(eps^4)); the RMS norms of Llama /
# OLMo 2 compute in float32 even in a float64 model (the same noise shows on resid_pre: ~1e-4 relative).
@pytest.mark.parametrize("family, eps, rtol", [("gpt2", 1e-3, 1e-7), ("gpt_neox", 1e-3, 1e-6), ("llama", 1e-3, 5e-4),
                                               ("olmo2", 1e-3, 5e-4)])
def test_split_gradients_match_finite_differences(family, eps, rtol):
    """float64: dm/d input of one head, dotted with a direction, equals the finite difference of
    the metric when only that head's input moves along it."""
    built = build_tiny(family, seed=5)
    model = built.model
    model.hf.double()
    tokens = built.tokens[:1]
    gen = torch.Generator().manual_seed(7)
    for suffix, head in (("attn.q_input", 1), ("attn.k_input", 1), ("attn.v_input", 0), ("mlp.in", None)):
        name = f"blocks.0.{suffix}"
        _, cache = model.run_with_cache(tokens, name, grad_metric=_metric)
        grad = cache.grads[name] if head is None else cache.grads[name][:, :, head]
        direction = torch.randn(grad.shape, generator=gen, dtype=torch.float64)
        target = ms.at(name, heads=head) if head is not None else name
        values = {}
        for step in (2, 1, -1, -2):
            with model.hooks({target: lambda x, ctx, s=step, d=direction: x + s * eps * d}), torch.no_grad():
                values[step] = float(_metric(model(tokens)))
        numeric = (-values[2] + 8 * values[1] - 8 * values[-1] + values[-2]) / (12 * eps)
        analytic = float((grad * direction).sum())
        assert abs(numeric - analytic) <= rtol * max(1.0, abs(analytic)), (suffix, numeric, analytic)


def test_backward_hooks_edit_split_gradients(tiny):
    """A backward hook on a split point sees its gradient and can replace it (zeroing every head's
    q, k and v input gradients removes the attention branch from resid_pre's gradient)."""
    model = tiny.model
    if model.cfg.parallel_attn_mlp:
        pytest.skip("sequential blocks: resid_mid separates the branches")
    seen = []
    zero = {f"blocks.0.attn.{p}_input": (lambda g, ctx: seen.append(ctx.name) or torch.zeros_like(g))
            for p in "qkv"}
    with model.hooks(backward=zero):
        _, cache = model.run_with_cache(tiny.tokens, ["blocks.0.resid_pre", "blocks.0.resid_mid"], grad_metric=_metric)
    assert sorted(seen) == sorted(zero)
    torch.testing.assert_close(cache.grads["blocks.0.resid_pre"], cache.grads["blocks.0.resid_mid"])


# --------------------------------------------------------------------------- the bundled model
def test_bundled_model_split_inputs(smol):
    model = smol
    tokens = model.to_tokens(["When Mary and John went to the store, John gave a drink to"])
    with torch.no_grad():
        plain = model(tokens)
    logits, cache = model.run_with_cache(tokens, ["blocks.*.attn.*_input", "blocks.*.mlp.in"],
                                         grad_metric=lambda lg: lg[0, -1].log_softmax(-1).max())
    assert (logits - plain).abs().max() <= 1e-4 * plain.abs().max()
    assert cache["blocks.3.attn.k_input"].shape == (1, tokens.shape[1], 3, 576)
    # one query head of layer 1 reading another prompt's residual = patching its attn.q
    other = model.to_tokens(["When Anna and Paul went to the park, Paul handed a ball to"])
    assert other.shape == tokens.shape
    with torch.no_grad():
        _, source = model.run_with_cache(other, "blocks.1.resid_pre")
    xp = source["blocks.1.resid_pre"]
    with model.hooks({ms.at("blocks.1.attn.q_input", heads=4): lambda x, ctx: xp}), torch.no_grad():
        patched = model(tokens)
    _, on_xp = _recorded(model, ["blocks.1.attn.q"], lambda: model.run_from(1, xp, tokens))
    with model.hooks({ms.at("blocks.1.attn.q", heads=4): lambda x, ctx: on_xp["blocks.1.attn.q"][:, :, 4]}), torch.no_grad():
        reference = model(tokens)
    assert not torch.allclose(patched, plain, atol=1e-3)
    torch.testing.assert_close(patched, reference, atol=1e-4, rtol=0)
