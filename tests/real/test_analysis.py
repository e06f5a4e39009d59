"""Observational analysis on the bundled model: lens, DLA, and its induction heads."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.analysis.dla import direct_logit_attribution
from mechscope.analysis.heads import head_scores
from mechscope.analysis.lens import logit_lens
from mechscope.data.repeated import repeated_random_tokens

IOI = "When Mary and John went to the store, John gave a drink to"


def test_logit_lens_on_ioi(smol):
    mary = smol.to_single_token(" Mary")
    lens = logit_lens(smol, IOI, target=mary)
    assert lens.target_rank[-1, 0, -1] == 0 and lens.kl_to_final[-1].abs().max() < 1e-4
    assert lens.target_rank[5, 0, -1] > 100  # early layers do not yet predict the answer
    assert lens.kl_to_final[0, 0, -1] > lens.kl_to_final[-2, 0, -1]


@pytest.mark.parametrize("side", ["right", "left"])
def test_logit_lens_target_readings_equal_brute_force_on_a_padded_batch(smol, side):
    from mechscope.analysis.lens import _projector

    prompts = [IOI, "The capital of France is", "Paris"]
    tokens, mask = smol.to_tokens(prompts, padding_side=side, return_mask=True)
    lens = logit_lens(smol, tokens, target="next", attention_mask=mask, stats=("target_logprob", "target_rank"))
    assert lens.stats == ("target_logprob", "target_rank") and lens.kl_to_final is None and lens.top_ids is None
    logits, cache = smol.run_with_cache(tokens, lens.labels, attention_mask=mask)
    has = lens.target_ids >= 0
    assert int(has.sum()) == int(mask.sum()) - len(prompts)  # every real position but the last of each prompt
    index = lens.target_ids.clamp(min=0)[..., None]
    if torch.backends.mkldnn.is_available():  # the fast unembedding reproduces the model's logits here
        final = logits.reshape(-1, logits.shape[-1])
        assert _projector(smol, cache[lens.labels[-1]].reshape(final.shape[0], -1)[:8], final[:8]).__name__ == "fast"
    with torch.no_grad():
        for depth, name in enumerate(lens.labels):
            point_logits = smol.unembed(cache[name]).float()
            logprobs = torch.log_softmax(point_logits, -1)  # the brute-force reference
            value = logprobs.gather(-1, index)
            tol = 2e-6 * (1 + float(point_logits.abs().max()))  # fp32 rounding at this logit scale
            torch.testing.assert_close(lens.target_logprob[depth][has], value[..., 0][has], atol=tol, rtol=0)
            low, high = (logprobs > value + tol).sum(-1), (logprobs > value - tol).sum(-1)  # ranks up to near-ties
            rank = lens.target_rank[depth]
            assert ((low <= rank) & (rank <= high))[has].all(), name
            assert torch.isnan(lens.target_logprob[depth][~has]).all() and (rank[~has] == -1).all()
    full = logit_lens(smol, tokens, target="next", attention_mask=mask, k=1)
    torch.testing.assert_close(full.target_logprob[:, has], lens.target_logprob[:, has], atol=1e-4, rtol=0)
    assert full.kl_to_final[-1].abs().max() == 0 and full.kl_to_final[0, has].min() > 1


def test_dla_sums_to_the_ioi_logit_difference(smol):
    pair = (smol.to_single_token(" Mary"), smol.to_single_token(" John"))
    result = direct_logit_attribution(smol, IOI, pair)
    logits = smol(IOI)
    actual = (logits[0, -1, pair[0]] - logits[0, -1, pair[1]]).item()
    assert abs(result.total.item() - actual) < 1e-3
    best_layer, best_head = divmod(int(result.per_head()[0].flatten().argmax()), smol.cfg.n_heads)
    assert best_layer >= 20  # the answer is written by late heads


@pytest.fixture(scope="module")
def induction(smol):
    tokens = repeated_random_tokens(50, batch=4, seed=0)
    return tokens, head_scores(smol, tokens)


def _second_copy_loss(model, tokens, heads):
    hooks = {ms.at(f"blocks.{l}.attn.z", heads=h): (lambda z, ctx: torch.zeros_like(z)) for l, h in heads}
    with torch.no_grad(), model.hooks(hooks):
        logits = model(tokens)
    return torch.nn.functional.cross_entropy(logits[:, 50:-1].flatten(0, 1), tokens[:, 51:].flatten()).item()


def test_smollm2_has_induction_heads_that_matter(smol, induction):
    tokens, scores = induction
    top = scores.top(5, kind="induction")
    assert top.score.iloc[0] > 0.4
    clean = _second_copy_loss(smol, tokens, [])
    ablated = _second_copy_loss(smol, tokens, list(zip(top.layer.tolist(), top["head"].tolist())))
    strongest = torch.stack([scores.scores[k] for k in ("induction", "previous_token", "duplicate_token")]).amax(0)
    quiet = sorted((strongest[l, h].item(), l, h) for l in range(2, 30) for h in range(9))[:5]
    control = _second_copy_loss(smol, tokens, [(l, h) for _, l, h in quiet])
    assert clean < 3.0 and ablated > 3 * clean and control < 1.5 * clean, (clean, ablated, control)


def test_wikipedia_corpus_is_real_text(smol):
    from mechscope.data import corpora

    texts = corpora.wikipedia()
    assert len(texts) > 100 and texts[0].startswith("Anarchism is a political philosophy")
    assert not any("{{" in t or "[[" in t for t in texts[:20])
    windows = corpora.token_windows(smol.tokenizer, texts, 64, 4)
    assert windows.shape == (4, 64)
