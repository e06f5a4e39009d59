"""Weight-based circuit analysis (Elhage et al. 2021): QK and OV circuits, copying scores,
and Q-, K- and V-composition between heads.

By default the preceding norms are folded into the weights (``fold_norm=True``): the ln1
scale into W_Q/W_K/W_V and the final norm's scale into W_U, as the residual stream is read
through them. GQA key/value heads are expanded so every query head has its own W_K, W_V.
"""

from __future__ import annotations

import torch

from ..errors import SelectionError
from ..models.hooked import HookedModel
from .factored import FactoredMatrix


def ov_circuit(model: HookedModel, layer: int, *, fold_norm: bool = True) -> FactoredMatrix:
    """`[n_heads, d_model, d_model]`: ``W_V[h] @ W_O[h]`` (residual in -> residual out)."""
    weights = model.weights(fold_norm=fold_norm, expand_kv=True)
    return FactoredMatrix(weights.W_V[layer], weights.W_O[layer])


def qk_circuit(model: HookedModel, layer: int, *, fold_norm: bool = True) -> FactoredMatrix:
    """`[n_heads, d_model, d_model]`: ``W_Q[h] @ W_K[h]ᵀ`` (query residual x key residual -> score)."""
    weights = model.weights(fold_norm=fold_norm, expand_kv=True)
    return FactoredMatrix(weights.W_Q[layer], weights.W_K[layer].transpose(-1, -2))


def full_ov_circuit(model: HookedModel, layer: int, *, fold_norm: bool = True) -> FactoredMatrix:
    """`[n_heads, d_vocab, d_vocab]`, kept factored: ``W_E @ W_V[h] @ W_O[h] @ W_U``."""
    weights = model.weights(fold_norm=fold_norm, expand_kv=True)
    return FactoredMatrix(weights.W_E @ weights.W_V[layer], weights.W_O[layer] @ weights.W_U)


def copying_scores(model: HookedModel, *, fold_norm: bool = True) -> torch.Tensor:
    """`[n_layers, n_heads]`: ``sum(λ) / sum(|λ|)`` over the eigenvalues λ of the full OV circuit.

    Near +1: the head copies the tokens it attends to into the logits. Computed from the
    `[d_head, d_head]` matrices ``W_O (W_U W_E) W_V`` (same nonzero eigenvalues).
    """
    weights = model.weights(fold_norm=fold_norm, expand_kv=True)
    with torch.no_grad():
        unembed_embed = weights.W_U.float() @ weights.W_E.float()  # [d_model, d_model]
        scores = []
        for layer in range(model.cfg.n_layers):
            core = weights.W_O[layer].float() @ unembed_embed @ weights.W_V[layer].float()  # [h, dh, dh]
            eig = torch.linalg.eigvals(core)
            scores.append(eig.real.sum(-1) / eig.abs().sum(-1))
    return torch.stack(scores)


def _reader(model: HookedModel, kind: str, fold_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (P `[L, H, d, dh]`, R `[L, H, dh, d]`) of the matrix head B applies to what it reads."""
    weights = model.weights(fold_norm=fold_norm, expand_kv=True)
    if kind == "q":
        return weights.W_Q[:], weights.W_K[:].transpose(-1, -2)
    if kind == "k":
        return weights.W_K[:], weights.W_Q[:].transpose(-1, -2)
    if kind == "v":
        return weights.W_V[:], weights.W_O[:]
    raise SelectionError(f"composition kind must be 'q', 'k' or 'v', got {kind!r}")


def composition_scores(model: HookedModel, kind: str, *, fold_norm: bool = True) -> torch.Tensor:
    """`[n_layers, n_heads, n_layers, n_heads]`: score of head (l1, h1) composing into (l2, h2).

    ``||OV_A M_B||_F / (||OV_A||_F ||M_B||_F)`` with ``M_B`` = ``QK_B`` (Q-composition),
    ``QK_Bᵀ`` (K-composition) or ``OV_B`` (V-composition); NaN unless l2 > l1. Computed
    from `[d_head, d_head]` Gram matrices, never forming `[d_model, d_model]` products.
    """
    weights = model.weights(fold_norm=fold_norm, expand_kv=True)
    with torch.no_grad():
        X, Y = weights.W_V[:].float(), weights.W_O[:].float()  # OV_A = X Y
        P, R = (t.float() for t in _reader(model, kind, fold_norm))  # M_B = P R
        gram_x = X.transpose(-1, -2) @ X  # [L, H, dh, dh]
        gram_r = R @ R.transpose(-1, -2)
        ov_norm = ((gram_x * (Y @ Y.transpose(-1, -2))).sum((-1, -2))).sqrt()  # [L, H]
        m_norm = (((P.transpose(-1, -2) @ P) * gram_r).sum((-1, -2))).sqrt()
        n_layers, n_heads = ov_norm.shape
        scores = torch.full((n_layers, n_heads, n_layers, n_heads), float("nan"))
        for a in range(n_layers - 1):
            later = slice(a + 1, n_layers)
            core = torch.einsum("hed,lkdf->hlkef", Y[a], P[later])  # C = Y_A P_B
            inner = torch.einsum("hge,hlkef->hlkgf", gram_x[a], core)  # X^T X C
            product = torch.einsum("hlkgf,hlkgi->hlkfi", core, inner)  # C^T X^T X C
            squared = torch.einsum("hlkfi,lkfi->hlk", product, gram_r[later])
            scores[a, :, later] = squared.clamp(min=0).sqrt() / (ov_norm[a][:, None, None] * m_norm[later][None])
    return scores
