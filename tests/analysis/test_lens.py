"""Logit lens against a hand-written unembedding and brute-force ranks."""

from __future__ import annotations

import torch

from mechscope.analysis.lens import logit_lens
from mechscope.models.norms import norm_eps


def _manual_logprobs(model, resid):
    """Final norm + unembedding written out from the weights (not the model's modules)."""
    norm = model.hf.get_submodule(model.adapter.weights.ln_final)
    x = resid.float()
    if model.adapter.norm.kind == "rms":
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm_eps(norm))
    else:
        x = x - x.mean(-1, keepdim=True)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm_eps(norm))
    x = x * (norm.weight.float() + model.adapter.norm.weight_offset)
    if getattr(norm, "bias", None) is not None:
        x = x + norm.bias
    logits = x @ model.W_U.float() + model.b_U.float()
    cap = getattr(model.hf.config, model.adapter.final_softcap_attr or "", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, -1)


def test_last_layer_is_the_model_and_middle_layer_matches_manual(tiny):
    model = tiny.model
    result = logit_lens(model, tiny.tokens, target="next", k=3)
    assert result.labels[0] == "blocks.0.resid_pre" and len(result.labels) == model.cfg.n_layers + 1
    assert result.kl_to_final[-1].abs().max() < 1e-5
    with torch.no_grad():
        logits = model(tiny.tokens)
    assert torch.equal(result.top_ids[-1], logits.topk(3, dim=-1).indices)
    _, cache = model.run_with_cache(tiny.tokens, "blocks.0.resid_post")
    manual = _manual_logprobs(model, cache["blocks.0.resid_post"])
    targets = tiny.tokens[:, 1:]
    expected = manual[:, :-1].gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(result.target_logprob[1, :, :-1], expected, atol=1e-4, rtol=0)
    assert torch.isnan(result.target_logprob[:, :, -1]).all()
    for b, p in [(0, 0), (1, 5), (2, 10)]:  # ranks by counting
        target_lp = manual[b, p, targets[b, p]]
        assert result.target_rank[1, b, p] == sum(int(v > target_lp) for v in manual[b, p].tolist())


def test_sublayers_and_frames(tiny):
    result = logit_lens(tiny.model, tiny.tokens, target=5, sublayers=True)
    expected = 1 + tiny.model.cfg.n_layers * (1 if tiny.model.cfg.parallel_attn_mlp else 2)
    assert len(result.labels) == expected
    frame = result.to_dataframe()
    assert len(frame) == expected * 3 * 12 and {"kl_to_final", "target_rank"} <= set(frame.columns)
    assert "<table" in result._repr_html_()
