"""Repeated random token sequences: the standard probe for induction heads."""

from __future__ import annotations

import torch

from ..errors import SelectionError


def repeated_random_tokens(n_tokens: int, batch: int = 1, *, low: int = 100, high: int = 20000,
                           repeats: int = 2, seed: int = 0, prefix: int | None = None) -> torch.Tensor:
    """``repeats`` copies of ``n_tokens`` uniform random ids in ``[low, high)`` per row.

    Returns LongTensor `[batch, (prefix is not None) + repeats * n_tokens]`; ``prefix`` (e.g. a
    BOS id) is put in front of every row.
    """
    if n_tokens < 2 or repeats < 2:
        raise SelectionError("need at least 2 tokens repeated at least twice")
    generator = torch.Generator().manual_seed(seed)
    block = torch.randint(low, high, (batch, n_tokens), generator=generator)
    tokens = block.repeat(1, repeats)
    if prefix is not None:
        tokens = torch.cat([torch.full((batch, 1), prefix, dtype=torch.long), tokens], dim=1)
    return tokens
