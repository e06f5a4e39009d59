"""IOI on the bundled model: the task works and patching recovers it."""

from __future__ import annotations

import torch

from mechscope.causal.attribution import attribution_patching
from mechscope.causal.metrics import logit_diff
from mechscope.causal.patching import activation_patching
from mechscope.data.ioi import ioi


def test_ioi_clean_and_abc_corrupted(smol):
    pairs = ioi(smol, 24)
    with torch.no_grad():
        clean = logit_diff(smol(pairs.clean), pairs)
        corrupted = logit_diff(smol(pairs.corrupted), pairs)
    assert clean.mean() > 3 and (clean > 0).all()
    assert corrupted.mean().abs() < 0.25 * clean.mean()


def test_residual_patching_recovers_the_clean_answer(smol):
    pairs = ioi(smol, 2)
    result = activation_patching(smol, pairs, "resid_post")
    last = pairs.clean.shape[1] - 1
    # The final position's clean output of the last block is the clean run there: logits equal.
    torch.testing.assert_close(result.raw[-1, last], result.clean_metric, atol=1e-4, rtol=0)
    # Before the first name, clean and corrupted activations are identical: patching them does nothing.
    first_difference = int((pairs.clean != pairs.corrupted).any(0).float().argmax())
    assert first_difference > 0
    for layer in (0, 15, 29):
        torch.testing.assert_close(result.raw[layer, :first_difference],
                                   result.corrupted_metric.expand(first_difference, -1), atol=1e-4, rtol=0)
    assert result.values[-1, last] > 0.99


def test_attribution_patching_tracks_exact_head_patching(smol):
    pairs = ioi(smol, 24)
    exact = activation_patching(smol, pairs, "heads", answer_logits_only=True)
    approx = attribution_patching(smol, pairs, "heads")
    r = torch.corrcoef(torch.stack([exact.values.flatten(), approx.values.flatten()]))[0, 1]
    assert r > 0.8, r
    # The head that restores the most is the same for both, and it is the IOI name mover L23H3.
    cells = [tuple(int(v) for v in result.top(1)[["layer", "head"]].iloc[0]) for result in (exact, approx)]
    assert cells == [(23, 3), (23, 3)]
