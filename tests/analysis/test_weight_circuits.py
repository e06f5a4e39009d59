"""Factored matrices and weight-based circuits against dense brute force."""

from __future__ import annotations

import torch

from mechscope.analysis.weight_circuits import composition_scores, copying_scores, full_ov_circuit, ov_circuit, qk_circuit
from mechscope.analysis.factored import FactoredMatrix


def test_factored_matrix_matches_dense():
    gen = torch.Generator().manual_seed(0)
    A, B = torch.randn(3, 40, 6, generator=gen, dtype=torch.float64), torch.randn(3, 6, 30, generator=gen, dtype=torch.float64)
    fm = FactoredMatrix(A, B)
    dense = A @ B
    assert fm.shape == (3, 40, 30)
    torch.testing.assert_close(fm.norm(), torch.linalg.matrix_norm(dense))
    u, s, v = fm.svd()
    torch.testing.assert_close(u @ torch.diag_embed(s) @ v.transpose(-1, -2), dense)
    torch.testing.assert_close(s, torch.linalg.svdvals(dense)[:, :6])
    torch.testing.assert_close(fm.T.full(), dense.transpose(-1, -2))
    C = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    torch.testing.assert_close((fm @ C).full(), dense @ C)
    left = torch.randn(5, 40, generator=gen, dtype=torch.float64)
    torch.testing.assert_close((left @ fm).full(), left @ dense)
    torch.testing.assert_close((fm @ FactoredMatrix(B.transpose(-1, -2), A.transpose(-1, -2))).full(),
                               dense @ dense.transpose(-1, -2))
    square = FactoredMatrix(A, A.transpose(-1, -2))
    eig = square.eigenvalues()
    dense_eig = torch.linalg.eigvals(square.full())  # [3, 40]: 6 nonzero each
    top = dense_eig.abs().sort(descending=True).values[:, :6]
    torch.testing.assert_close(eig.abs().sort(descending=True).values, top)
    torch.testing.assert_close(fm[1].full(), dense[1])


def test_circuits_and_copying_scores_match_dense(tiny):
    model = tiny.model
    weights = model.weights(fold_norm=True, expand_kv=True)
    layer = 1
    for h in range(model.cfg.n_heads):
        torch.testing.assert_close(ov_circuit(model, layer)[h].full(), weights.W_V[layer, h] @ weights.W_O[layer, h])
        torch.testing.assert_close(qk_circuit(model, layer)[h].full(), weights.W_Q[layer, h] @ weights.W_K[layer, h].T)
    full = full_ov_circuit(model, layer).full().double()  # [h, vocab, vocab], small here
    eig = torch.linalg.eigvals(full)
    expected = eig.real.sum(-1) / eig.abs().sum(-1)
    torch.testing.assert_close(copying_scores(model)[layer].double(), expected, atol=1e-4, rtol=0)


def test_composition_scores_match_dense(tiny):
    model = tiny.model
    w = model.weights(fold_norm=True, expand_kv=True)
    for kind in ("q", "k", "v"):
        scores = composition_scores(model, kind)
        assert torch.isnan(scores[1, :, 0]).all() and torch.isnan(scores[0, :, 0]).all()
        for a in range(model.cfg.n_heads):
            ov = w.W_V[0, a] @ w.W_O[0, a]
            for b in range(model.cfg.n_heads):
                m = {"q": w.W_Q[1, b] @ w.W_K[1, b].T, "k": w.W_K[1, b] @ w.W_Q[1, b].T,
                     "v": w.W_V[1, b] @ w.W_O[1, b]}[kind]
                expected = torch.linalg.matrix_norm(ov @ m) / (torch.linalg.matrix_norm(ov) * torch.linalg.matrix_norm(m))
                assert abs(scores[0, a, 1, b] - expected) < 1e-4, (kind, a, b)
