"""Harvesting SmolLM2 activations for SAE training: the cache's values, special tokens dropped."""

from __future__ import annotations

import torch

from mechscope.data.harvest import harvest

NAMES = ("blocks.3.resid_post", "blocks.5.mlp.out")


def test_harvest_drops_special_tokens(smol):
    tokens = smol.to_tokens(["The capital of France is Paris", "def main():\n    return 0"], prepend_bos=True,
                            padding_side="right")
    chunks = list(harvest(smol, NAMES, tokens.split(1)))
    _, cache = smol.run_with_cache(tokens, list(NAMES))
    special = torch.tensor(smol.tokenizer.all_special_ids)
    for chunk, row in zip(chunks, range(2)):
        keep = ~torch.isin(tokens[row], special)
        assert keep.sum() < tokens.shape[1]  # BOS (and padding) removed
        for name in NAMES:
            torch.testing.assert_close(chunk[name], cache[name][row][keep], atol=1e-5, rtol=1e-5)
