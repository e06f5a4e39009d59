"""Logit lens against a hand-written unembedding and brute-force ranks."""

from __future__ import annotations

import pytest
import torch

from mechscope.analysis.lens import logit_lens
from mechscope.models.norms import norm_eps


def _manual_logprobs(model, resid):
    """Final norm + unembedding written out from the weights (not the model's modules)."""
    norm = model.hf.get_submodule(model.adapter.components.ln_final)
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


def _brute_force(model, tokens, labels, mask=None):
    """Log-probs `[L, batch, pos, vocab]` the plain way: model.unembed(resid) -> log_softmax."""
    logits, cache = model.run_with_cache(tokens, labels, attention_mask=mask)
    with torch.no_grad():
        return torch.stack([torch.log_softmax(model.unembed(cache[name]).float(), -1) for name in labels]), logits


def _next_targets(tokens, mask=None):
    targets = torch.full_like(tokens, -1)
    targets[:, :-1] = tokens[:, 1:]
    if mask is not None:
        targets[:, :-1][mask[:, 1:] == 0] = -1
        targets[mask == 0] = -1
    return targets


def test_target_logprobs_alone_equal_the_brute_force_reference(tiny):
    model = tiny.model
    result = logit_lens(model, tiny.tokens, target="next", stats="target_logprob")
    assert result.stats == ("target_logprob",)
    assert result.top_ids is None and result.top_logprobs is None and result.kl_to_final is None
    assert result.target_rank is None
    lp, _ = _brute_force(model, tiny.tokens, result.labels)
    targets = tiny.tokens[:, 1:]
    expected = lp[:, :, :-1].gather(-1, targets[None, ..., None].expand(len(result.labels), -1, -1, 1))[..., 0]
    torch.testing.assert_close(result.target_logprob[:, :, :-1], expected, atol=1e-5, rtol=1e-6)
    assert torch.isnan(result.target_logprob[:, :, -1]).all()
    assert torch.equal(result.target_ids, _next_targets(tiny.tokens))


def test_full_readings_equal_the_brute_force_reference(tiny):
    model = tiny.model
    result = logit_lens(model, tiny.tokens, target="next", k=4)
    assert result.stats == ("top_ids", "top_logprobs", "kl_to_final", "target_logprob", "target_rank")
    lp, _ = _brute_force(model, tiny.tokens, result.labels)
    top = lp.topk(4, dim=-1)
    assert torch.equal(result.top_ids, top.indices)
    torch.testing.assert_close(result.top_logprobs, top.values, atol=1e-5, rtol=1e-6)
    final = lp[-1]
    kl = (final.exp() * (final - lp)).sum(-1)
    torch.testing.assert_close(result.kl_to_final, kl, atol=1e-4, rtol=1e-5)
    assert torch.equal(result.kl_to_final[-1], torch.zeros_like(result.kl_to_final[-1]))  # the model itself
    targets = tiny.tokens[:, 1:]
    value = lp[:, :, :-1].gather(-1, targets[None, ..., None].expand(len(result.labels), -1, -1, 1))
    torch.testing.assert_close(result.target_logprob[:, :, :-1], value[..., 0], atol=1e-5, rtol=1e-6)
    assert torch.equal(result.target_rank[:, :, :-1], (lp[:, :, :-1] > value).sum(-1))
    assert (result.target_rank[:, :, -1] == -1).all()  # no target after the last position
    alone = logit_lens(model, tiny.tokens, target="next", stats=("target_logprob", "target_rank"))
    assert torch.equal(alone.target_logprob.nan_to_num(), result.target_logprob.nan_to_num())
    assert torch.equal(alone.target_rank, result.target_rank)


def test_padded_batches_read_only_real_positions(tiny):
    model = tiny.model
    mask = torch.ones_like(tiny.tokens)
    mask[0, :4] = 0  # left padding
    mask[1, 9:] = 0  # right padding
    lp, _ = _brute_force(model, tiny.tokens, logit_lens(model, tiny.tokens, stats="top").labels, mask)
    targets = _next_targets(tiny.tokens, mask)
    has = targets >= 0
    for stats in ("target_logprob", ("target_logprob", "target_rank", "kl_to_final")):
        result = logit_lens(model, tiny.tokens, target="next", attention_mask=mask, stats=stats)
        assert torch.equal(result.target_ids, targets)
        value = lp.gather(-1, targets.clamp(min=0)[None, ..., None].expand(lp.shape[0], -1, -1, 1))
        torch.testing.assert_close(result.target_logprob[:, has], value[..., 0][:, has], atol=1e-5, rtol=1e-6)
        assert torch.isnan(result.target_logprob[:, ~has]).all()
        if result.target_rank is not None:
            assert torch.equal(result.target_rank[:, has], (lp > value).sum(-1)[:, has])
            assert (result.target_rank[:, ~has] == -1).all()
    fixed = logit_lens(model, tiny.tokens, target=7, attention_mask=mask, stats="target")
    assert torch.equal(fixed.target_ids == 7, mask.bool())
    torch.testing.assert_close(fixed.target_logprob[:, mask.bool()], lp[:, mask.bool()][..., 7], atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("tiny", ["gpt2", "llama"], indirect=True)
def test_asking_for_targets_skips_the_full_vocabulary_work(tiny, monkeypatch):
    import mechscope.analysis.lens as lens_module

    read_rows = []
    real_read = lens_module._read

    def spy(project, resid, final, targets, wanted, k):
        read_rows.append(resid.shape[0])
        return real_read(project, resid, final, targets, wanted, k)

    real_topk = torch.Tensor.topk

    def no_topk(self, *args, **kwargs):
        if self.shape[-1] == tiny.model.cfg.d_vocab:
            raise AssertionError("a top-k over the vocabulary though only target log-probs were asked for")
        return real_topk(self, *args, **kwargs)

    monkeypatch.setattr(lens_module, "_read", spy)
    monkeypatch.setattr(torch.Tensor, "topk", no_topk)
    target = torch.full_like(tiny.tokens, -1)
    target[:, -1] = 5  # one answer per prompt, at its last position
    result = logit_lens(tiny.model, tiny.tokens, target=target, stats="target_logprob")
    assert read_rows == [3]  # only the three positions with a target were unembedded
    assert result.stats == ("target_logprob",)
    assert torch.isnan(result.target_logprob[:, :, :-1]).all() and not torch.isnan(result.target_logprob[:, :, -1]).any()
    frame = result.to_dataframe()
    assert "target_logprob" in frame and "kl_to_final" not in frame and "top_token" not in frame


@pytest.mark.parametrize("tiny", ["llama"], indirect=True)
def test_stats_selection_and_errors(tiny):
    from mechscope.errors import MechscopeError, SelectionError

    model = tiny.model
    assert logit_lens(model, tiny.tokens).stats == ("top_ids", "top_logprobs", "kl_to_final")
    assert logit_lens(model, tiny.tokens, stats="kl_to_final").stats == ("kl_to_final",)
    assert logit_lens(model, tiny.tokens, stats="top_ids").stats == ("top_ids", "top_logprobs")
    assert logit_lens(model, tiny.tokens, target=3, stats="all").stats[-2:] == ("target_logprob", "target_rank")
    ranks = logit_lens(model, tiny.tokens, target=3, stats="target_rank", sublayers=True)
    assert ranks.stats == ("target_rank",) and ranks.target_rank.shape[0] == len(ranks.labels)
    for bad, match in [(dict(stats="entropy"), "unknown lens stat 'entropy'"),
                       (dict(stats="target_logprob"), "need a target"),
                       (dict(stats=()), "no reading"),
                       (dict(target=10_000), "target ids must lie in"),
                       (dict(target="previous"), "target must be"),
                       (dict(k=0), "k must be between")]:
        with pytest.raises(SelectionError, match=match) as info:
            logit_lens(model, tiny.tokens, **bad)
        assert isinstance(info.value, MechscopeError)


def test_the_fast_unembedding_is_used_only_where_it_reproduces_the_model(tiny):
    from mechscope.analysis.lens import _projector

    model = tiny.model
    last = f"blocks.{model.cfg.n_layers - 1}.resid_post"
    logits, cache = model.run_with_cache(tiny.tokens, [last, "blocks.0.resid_post"])
    final, probe = logits.reshape(-1, logits.shape[-1]), cache[last].reshape(-1, model.cfg.d_model)
    project = _projector(model, probe[:8], final[:8])
    softcap = getattr(tiny.reference.config, "final_logit_softcapping", None)
    if softcap or not torch.backends.mkldnn.is_available():
        assert project.__name__ == "exact"  # model.unembed itself
    else:
        assert project.__name__ == "fast"
    middle = cache["blocks.0.resid_post"].reshape(-1, model.cfg.d_model)
    with torch.no_grad():
        expected = model.unembed(middle).float()
    torch.testing.assert_close(project(middle), expected, atol=1e-6 * (1 + float(expected.abs().max())), rtol=0)


@pytest.mark.parametrize("tiny", ["gpt_neox"], indirect=True)
def test_no_position_with_a_target(tiny):
    none = torch.full_like(tiny.tokens, -1)
    result = logit_lens(tiny.model, tiny.tokens, target=none, stats="target")
    assert torch.isnan(result.target_logprob).all() and (result.target_rank == -1).all()
    assert result.target_logprob.shape == (tiny.model.cfg.n_layers + 1, 3, 12)
