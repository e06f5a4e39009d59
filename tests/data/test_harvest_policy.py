"""The shared activation harvest: `harvest_all` is the concatenated `harvest`, and the token
policy's outlier rule drops the attention-sink-like tokens of any recorded name."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from mechscope.data.harvest import cat_chunks, harvest, harvest_all, n_rows
from mechscope.errors import SelectionError

NAMES = ["blocks.0.resid_post", "blocks.1.mlp.out"]


@pytest.fixture(scope="module")
def tiny_llama():
    return build_tiny("llama").model


def _tokens(n: int = 5) -> torch.Tensor:
    return torch.randint(3, 97, (n, 8), generator=torch.Generator().manual_seed(0))


def test_harvest_all_is_the_concatenated_harvest(tiny_llama):
    tokens = _tokens()
    together = harvest_all(tiny_llama, NAMES, tokens, batch_size=2, skip_special=False)
    chunks = list(harvest(tiny_llama, NAMES, tokens.split(2), skip_special=False))
    assert len(chunks) == 3 and n_rows(together) == 5 * 7  # position 0 of every row left out
    for name in NAMES:
        assert torch.equal(together[name], cat_chunks(chunks)[name])
        assert together[name].device.type == "cpu"
    with pytest.raises(SelectionError, match=r"\[n_seq >= 1, ctx\]"):
        harvest_all(tiny_llama, NAMES, tokens[0])


def test_outliers_of_any_name_are_dropped(tiny_llama):
    tokens = _tokens()

    def blow_up(x, ctx):  # one token of row 1 becomes an attention-sink-like outlier downstream
        x = x.clone()
        x[1, 3] *= 1000
        return x

    with tiny_llama.hooks({"blocks.0.resid_pre": blow_up}):
        kept_all = harvest_all(tiny_llama, NAMES, tokens, skip_special=False)
        dropped = harvest_all(tiny_llama, NAMES, tokens, skip_special=False, outlier_ratio=10.0)
    outlier = 1 * 7 + 2  # row 1, position 3 (position 0 is not harvested)
    keep = torch.ones(n_rows(kept_all), dtype=torch.bool)
    keep[outlier] = False
    for name in NAMES:
        assert torch.equal(dropped[name], kept_all[name][keep])
