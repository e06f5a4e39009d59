"""``FactoredMatrix``: a low-rank product ``A @ B`` kept factored.

Circuit matrices such as the full OV circuit ``W_E W_V W_O W_U`` are `[d_vocab, d_vocab]`
(2.4e9 entries for a 49k vocabulary) but have rank at most ``d_head``. Everything useful
about them (singular values, nonzero eigenvalues, norms, products) follows from the
factors: ``svd`` works on an `[r, r]` core after two thin QRs, ``eigenvalues`` uses
``eig(A B) \\ {0} == eig(B A)``, and the Frobenius norm is ``sum((AᵀA) * (BBᵀ))``.
Leading (batch) dimensions broadcast, so one object can hold every head of a layer.
"""

from __future__ import annotations

import torch

from ..errors import SelectionError


class FactoredMatrix:
    """``A @ B`` with ``A`` `[..., m, r]` and ``B`` `[..., r, n]`, never formed unless asked."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor):
        if A.shape[-1] != B.shape[-2]:
            raise SelectionError(f"inner dimensions differ: A {tuple(A.shape)} @ B {tuple(B.shape)}")
        self.A, self.B = A, B

    @property
    def shape(self) -> torch.Size:
        batch = torch.broadcast_shapes(self.A.shape[:-2], self.B.shape[:-2])
        return torch.Size((*batch, self.A.shape[-2], self.B.shape[-1]))

    @property
    def rank_bound(self) -> int:
        return self.A.shape[-1]

    def __matmul__(self, other: torch.Tensor | FactoredMatrix) -> FactoredMatrix:
        if isinstance(other, FactoredMatrix):
            if other.rank_bound <= self.rank_bound:
                return FactoredMatrix(self.A @ (self.B @ other.A), other.B)
            return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: torch.Tensor) -> FactoredMatrix:
        return FactoredMatrix(other @ self.A, self.B)

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.transpose(-1, -2), self.A.transpose(-1, -2))

    def __getitem__(self, index) -> FactoredMatrix:
        """Index the leading (batch) dimensions, e.g. one head."""
        batch = self.shape[:-2]
        A = self.A.expand(*batch, *self.A.shape[-2:])
        B = self.B.expand(*batch, *self.B.shape[-2:])
        return FactoredMatrix(A[index], B[index])

    def full(self) -> torch.Tensor:
        """The dense product `[..., m, n]` (only for small matrices)."""
        return self.A @ self.B

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``U [..., m, k]``, ``S [..., k]``, ``V [..., n, k]`` with ``A @ B == U diag(S) Vᵀ``."""
        qa, ra = torch.linalg.qr(self.A)
        qb, rb = torch.linalg.qr(self.B.transpose(-1, -2))
        u, s, vh = torch.linalg.svd(ra @ rb.transpose(-1, -2))
        return qa @ u, s, qb @ vh.transpose(-1, -2)

    def singular_values(self) -> torch.Tensor:
        return self.svd()[1]

    def eigenvalues(self) -> torch.Tensor:
        """Nonzero-eigenvalue candidates of a square ``A @ B``: ``eig(B @ A)``, `[..., r]` complex."""
        if self.A.shape[-2] != self.B.shape[-1]:
            raise SelectionError(f"eigenvalues need a square matrix, got {tuple(self.shape)}")
        return torch.linalg.eigvals(self.B @ self.A)

    def norm(self) -> torch.Tensor:
        """Frobenius norm `[...]`."""
        gram_a = self.A.transpose(-1, -2) @ self.A
        gram_b = self.B @ self.B.transpose(-1, -2)
        return (gram_a * gram_b).sum((-1, -2)).clamp(min=0).sqrt()

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, rank <= {self.rank_bound})"
