"""A transcoder set's evaluation against per-layer `evaluate_sae` (the same token policy) and
against the replacement model run through `model.saes` (every transcoder attached at once)."""

from __future__ import annotations

import torch
from conftest import build_tiny

import mechscope as ms
from mechscope.models.functional import kl_divergence, next_token_losses


def test_evaluation_matches_its_references():
    tiny = build_tiny("gpt2")
    model = tiny.model
    tokens = torch.randint(3, 97, (6, 12), generator=torch.Generator().manual_seed(0))
    transcoders = ms.TranscoderSet.fresh(model, d_sae=32, k=4, seed=3)
    result = ms.evaluate_transcoders(model, transcoders, tokens, batch_size=4)
    for i, tc in enumerate(transcoders):
        alone = ms.evaluate_sae(model, tc, tokens, batch_size=4)
        assert abs(float(result.fve[i]) - alone.fve) < 1e-5 and abs(float(result.l0[i]) - alone.l0) < 1e-5
    with torch.no_grad():
        clean = model(tokens)
        with model.saes(*transcoders, skip_first=True, outlier_ratio=10.0):
            replaced = model(tokens)
    assert abs(result.ce_clean - float(next_token_losses(clean, tokens).mean())) < 1e-5
    assert abs(result.ce_replaced - float(next_token_losses(replaced, tokens).mean())) < 1e-5
    kl = kl_divergence(clean[:, :-1].log_softmax(-1), replaced[:, :-1].log_softmax(-1)).mean()
    assert abs(result.kl_replaced - float(kl)) < 1e-5 and result.kl_replaced > 1e-3
    assert result.kl_with_errors < 1e-6 and abs(result.ce_with_errors - result.ce_clean) < 1e-5
    assert len(result.to_dataframe()) == model.cfg.n_layers and "CE" in result.summary()
