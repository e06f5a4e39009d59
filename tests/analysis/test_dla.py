"""Direct logit attribution: parts sum to the logit difference; one head checked by hand."""

from __future__ import annotations

import pytest
import torch

from mechscope import PerPrompt
from mechscope.analysis.dla import direct_logit_attribution
from mechscope.models.norms import norm_eps


def test_parts_sum_to_the_logit_difference(tiny):
    model = tiny.model
    result = direct_logit_attribution(model, tiny.tokens, (5, 7), position=-1)
    _, cache = model.run_with_cache(tiny.tokens, "ln_final.out", positions=-1)
    raw = cache["ln_final.out"] @ model.W_U + model.b_U  # pre-softcap logits
    expected = raw[:, 5] - raw[:, 7]
    torch.testing.assert_close(result.logit, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.total, expected, atol=1e-4, rtol=0)
    layers, heads = model.cfg.n_layers, model.cfg.n_heads
    assert result.per_head().shape == (3, layers, heads)
    rest = result.values[:, [result.labels.index(n) for n in result.labels if n in ("embed", "pos_embed", "bias")]]
    torch.testing.assert_close(result.per_layer().sum((1, 2)) + rest.sum(-1), result.total, atol=1e-4, rtol=0)
    frame = result.to_dataframe()
    assert len(frame) == 3 * len(result.labels) and list(frame.component[: len(result.labels)]) == result.labels
    assert result.top(1)["value"].iloc[0] == pytest.approx(result.values.mean(0)[result.values.mean(0).abs().argmax()].item())


def test_one_head_by_hand(tiny):
    """Head (1, 2): its z times W_O, scaled by the final residual's norm factor, dotted with W_U[:, 5].

    Under a sandwich norm (Gemma 2, OLMo 2) the head's share first goes through the attention
    post-norm with its scale frozen at the layer's whole attention output (all heads' z W_O + b_O).
    """
    model = tiny.model
    positions = PerPrompt([11, 4, 8])
    result = direct_logit_attribution(model, tiny.tokens, 5, position=positions)
    final = f"blocks.{model.cfg.n_layers - 1}.resid_post"
    _, cache = model.run_with_cache(tiny.tokens, ["blocks.1.attn.z", final], positions=positions)
    norm = model.hf.get_submodule(model.adapter.components.ln_final)
    x = cache[final]
    if model.adapter.norm.kind == "rms":
        inv = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm_eps(norm))
    else:
        inv = torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + norm_eps(norm))
    z = cache["blocks.1.attn.z"]  # [batch, heads, d_head] at the chosen positions
    head = z[:, 2] @ model.W_O[1, 2]
    if model.adapter.attn_out_norm is not None:
        assert model.adapter.norm.kind == "rms"
        post = model.hf.get_submodule(f"{model.adapter.layers}.1.{model.adapter.attn_out_norm}")
        raw = torch.einsum("bhe,hed->bd", z, model.W_O[1]) + model.b_O[1]
        post_inv = torch.rsqrt(raw.pow(2).mean(-1, keepdim=True) + norm_eps(post))
        head = head * post_inv * (post.weight + model.adapter.norm.weight_offset)
    if model.adapter.norm.kind == "layer":
        head = head - head.mean(-1, keepdim=True)
    expected = (head * inv * (norm.weight + model.adapter.norm.weight_offset)) @ model.W_U[:, 5]
    torch.testing.assert_close(result.values[:, result.labels.index("L1H2")], expected, atol=1e-5, rtol=0)
