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
    top = scores.top("induction", 5)
    assert top[0][2] > 0.4
    clean = _second_copy_loss(smol, tokens, [])
    ablated = _second_copy_loss(smol, tokens, [(l, h) for l, h, _ in top])
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
