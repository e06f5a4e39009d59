"""Issue 11, silent case 2: single-position readers on a padded batch read each prompt's own
tokens (the last real one by default), never a pad, with either padding side."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.analysis.dla import direct_logit_attribution
from mechscope.analysis.lens import logit_lens
from mechscope.errors import SelectionError
from mechscope.models.tokens import token_labels

LONG = "When Mary and John went to the store, John gave a drink to"
SHORT = "The capital of France is"
LENGTHS = (12, 5)  # real tokens of the two tiny prompts


def padded(tokens: torch.Tensor, side: str, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt 0 of ``tokens`` whole and prompt 1 cut to its first 5 tokens, padded on ``side``:
    ids and attention mask `[2, 12]`."""
    ids = torch.full((2, 12), pad, dtype=torch.long)
    mask = torch.zeros((2, 12), dtype=torch.long)
    for row, n in enumerate(LENGTHS):
        span = slice(0, n) if side == "right" else slice(12 - n, 12)
        ids[row, span], mask[row, span] = tokens[row, :n], 1
    return ids, mask


@pytest.mark.parametrize("side", ["right", "left"])
def test_dla_on_padded_text_reads_each_prompts_last_token(smol, side):
    """The issue's case: the short text's attribution is its own last token's, not a pad's."""
    paris, mary = smol.to_single_token(" Paris"), smol.to_single_token(" Mary")
    tokens, mask = smol.to_tokens([LONG, SHORT], padding_side=side, return_mask=True)
    batch = direct_logit_attribution(smol, tokens, (paris, mary), attention_mask=mask)
    for row, text in enumerate((LONG, SHORT)):
        alone = direct_logit_attribution(smol, text, (paris, mary))
        torch.testing.assert_close(batch.values[row], alone.values[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(batch.logit[row], alone.logit[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("position", [-1, -2])
def test_dla_negative_positions_count_real_tokens_from_each_end(tiny, side, position):
    """On tiny models of every family: position -k in a padded batch is each prompt's k-th
    last real token, equal to running the prompt alone."""
    model = tiny.model
    ids, mask = padded(tiny.tokens, side)
    batch = direct_logit_attribution(model, ids, (5, 7), position=position, attention_mask=mask)
    for row, n in enumerate(LENGTHS):
        alone = direct_logit_attribution(model, tiny.tokens[row, :n], (5, 7), position=position)
        torch.testing.assert_close(batch.values[row], alone.values[0], atol=1e-4, rtol=1e-4)


def test_dla_position_longer_than_a_prompt_is_a_clear_error(tiny):
    ids, mask = padded(tiny.tokens, "right")
    with pytest.raises(SelectionError, match="does not exist in prompt 1"):
        direct_logit_attribution(tiny.model, ids, 5, position=-6, attention_mask=mask)
    with pytest.raises(SelectionError, match="must be an int"):
        direct_logit_attribution(tiny.model, ids, 5, position=2.0, attention_mask=mask)


@pytest.mark.parametrize("side", ["right", "left"])
def test_logit_lens_on_padded_ids_equals_each_prompt_alone(tiny, side):
    """Every reading at a prompt's real tokens equals the prompt's own run."""
    model = tiny.model
    ids, mask = padded(tiny.tokens, side)
    batch = logit_lens(model, ids, target="next", attention_mask=mask)
    for row, n in enumerate(LENGTHS):
        alone = logit_lens(model, tiny.tokens[row, :n], target="next")
        real = mask[row].bool()
        for name in ("top_logprobs", "kl_to_final"):
            torch.testing.assert_close(getattr(batch, name)[:, row, real], getattr(alone, name)[:, 0],
                                       atol=1e-4, rtol=1e-4)
        # the target of a prompt's last real token does not exist in either run
        got, want = batch.target_logprob[:, row, real], alone.target_logprob[:, 0]
        assert torch.equal(got.isnan(), want.isnan())
        torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), atol=1e-4, rtol=1e-4)


def test_lens_tables_show_token_labels(smol):
    """Token display: the lens's table shows tokens as labels (whitespace made visible), its
    fields keep the decoded text."""
    lens = logit_lens(smol, SHORT, stats="top", k=1)
    ids = smol.to_tokens(SHORT)[0].tolist()
    frame = lens.to_dataframe()
    first = frame[frame["depth"] == 0]
    assert first["token"].tolist() == token_labels(smol.tokenizer, ids)
    assert "·capital" in first["token"].tolist() and lens.str_tokens[0][1] == " capital"
    top = frame["top_id"].tolist()
    assert frame["top_token"].tolist() == token_labels(smol.tokenizer, top)
    figure = lens.plot()
    assert list(figure.data[0].x)[1] == "1:·capital"


def test_ms_exports_the_readers():
    assert ms.direct_logit_attribution is direct_logit_attribution and ms.logit_lens is logit_lens
