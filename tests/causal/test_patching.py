"""Batched activation patching: equal to the one-forward-per-cell loop, and its identities."""
# patch_one_by_one shares no code with the batched path but the cell list: it slices each
# activation by hand, one forward per cell.

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.causal.patching import activation_patching, patch_one_by_one
from mechscope.data.tasks import PromptPairs


def _pairs(seed=0, n=3, pos=8):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, 97, (n, pos), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(3, 97, (n,), generator=gen)  # one corrupted slot
    return PromptPairs(clean, corrupted, torch.randint(3, 97, (n,), generator=gen), torch.randint(3, 97, (n,), generator=gen))


@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "mlp_out", "heads", "head_v", "head_pattern"])
def test_batched_equals_naive_loop(tiny, component):
    pairs = _pairs()
    batched = activation_patching(tiny.model, pairs, component, variants_per_pass=5)
    naive = patch_one_by_one(tiny.model, pairs, component)
    assert torch.equal(batched.raw, naive), (batched.raw - naive).abs().max()


def test_identities(tiny):
    model = tiny.model
    pairs = _pairs(1)
    same = PromptPairs(pairs.clean, pairs.clean.clone(), pairs.answers, pairs.wrong)
    result = activation_patching(model, same, "resid_pre")
    torch.testing.assert_close(result.raw, result.clean_metric.expand_as(result.raw), atol=1e-5, rtol=0)
    full = activation_patching(model, pairs, "resid_pre")
    # restoring the whole clean residual at any layer, at the corrupted slot and everywhere after, is the
    # clean run; restoring only the corrupted slot (pos 2) at layer 0 already is, since nothing else differs
    torch.testing.assert_close(full.raw[0, 2], full.clean_metric, atol=1e-5, rtol=0)
    torch.testing.assert_close(full.values[0, 2], torch.tensor(1.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(full.raw[0, 5], full.corrupted_metric, atol=1e-5, rtol=0)  # untouched slot: nothing


def test_bad_inputs():
    clean = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ms.SelectionError, match="differ in shape"):
        PromptPairs(clean, torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ms.SelectionError, match="non-empty"):
        PromptPairs(torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, 5, dtype=torch.long),
                    torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
