"""Harvesting activations from a model, for anything trained or fitted on them (SAEs and
transcoders, the tuned lens, probes): several names per forward, one token policy, and a
buffer that mixes tokens across sequences.

    for chunk in harvest(model, ["blocks.3.resid_post", "blocks.5.mlp.out"], windows.split(8)):
        chunk["blocks.3.resid_post"]                       # [n_kept_tokens, d_model], on the CPU
    acts = harvest_all(model, names, windows)             # the same, concatenated
    for batch in ShuffleBuffer(65536, seed=0).mix(chunks, batch_size=4096):
        ...                                                # {name: [4096, d]}

The token policy: the tokenizer's special tokens (BOS, padding, EOS) and position 0 are
left out (`token_mask`); attention-sink outliers, tokens whose norm is over ``ratio`` times
the median, can be left out too (`massive_tokens`). On SmolLM2 position 0 reaches a residual
norm of ~23,700 against a median of ~171 whether or not it is a BOS token, and would
dominate every statistic.

Only per-token activations are harvested: ``[batch, pos, d]`` ones as they are, and per-head
ones ``[batch, pos, head, d]`` (``attn.q/k/v/z``, ``attn.head_out``) with the heads flattened
into one row of ``n_heads * d`` per token (`token_width`); attention scores and patterns
(``[batch, head, query, key]``) have no row per token and are refused (`check_per_token`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from ..errors import SelectionError

if TYPE_CHECKING:
    from ..models.hook_points import HookPoint
    from ..models.hooked import HookedModel

PER_TOKEN_LAYOUTS = ("bpd", "bphd")  # layouts with the position on axis 1 and a fixed width per token

Chunk = dict[str, torch.Tensor]  # activation name -> [n_tokens, d], the same tokens in every entry


def token_mask(model: HookedModel, tokens: torch.Tensor, *, skip_special: bool = True,
               skip_first: bool = True) -> torch.Tensor:
    """`[b, ctx]` bool (on the CPU) for token ids ``tokens`` `[b, ctx]`: True where a token's
    activations count (not one of the tokenizer's special tokens with ``skip_special``, not
    position 0 with ``skip_first``)."""
    tokenizer = model.tokenizer
    special = sorted(set(getattr(tokenizer, "all_special_ids", []) or [])) if skip_special and tokenizer else []
    keep = ~torch.isin(tokens.cpu(), torch.tensor(special, dtype=tokens.dtype))
    if skip_first:
        keep[:, 0] = False
    return keep


def check_per_token(point: HookPoint) -> HookPoint:
    """``point``, or a `SelectionError` when it has no fixed-width row per token (attention
    scores and patterns, ``[batch, head, query, key]``)."""
    if point.layout not in PER_TOKEN_LAYOUTS or point.width is None:
        raise SelectionError(
            f"{point.name!r} has layout {point.layout!r} ([batch, head, query, key]): activations are harvested "
            "(and SAEs read them) one row per token, from [batch, pos, d] or per-head [batch, pos, head, d] names "
            "such as resid_post, mlp.out or attn.z")
    return point


def token_width(point: HookPoint) -> int:
    """The width of one token's row of ``point`` as harvested: ``d``, or ``n_heads * d`` for a
    per-head activation (heads flattened)."""
    check_per_token(point)
    return point.width * (point.n_heads or 1) if point.layout == "bphd" else point.width


def massive_tokens(acts: torch.Tensor, ratio: float | None) -> torch.Tensor:
    """`[...]` bool: tokens of ``acts`` `[..., d]` whose norm exceeds ``ratio`` times the median
    norm of all of them (all False when ``ratio`` is None). These are attention-sink outliers:
    on SmolLM2's blocks.15.resid_post about 0.03% of tokens past position 0 (mostly position 1
    of windows that start mid-document) reach norms of ~24,000 against a median of ~174 and
    carry ~90% of the variance, so they are left out of SAE training, metrics and splicing."""
    if ratio is None:
        return torch.zeros(acts.shape[:-1], dtype=torch.bool, device=acts.device)
    norms = acts.float().norm(dim=-1)
    return norms > ratio * norms.median()


def harvest(model: HookedModel, names: Sequence[str], batches: Iterable[torch.Tensor], *,
            skip_special: bool = True, skip_first: bool = True, outlier_ratio: float | None = None,
            dtype: torch.dtype = torch.float32) -> Iterator[Chunk]:
    """For each batch of token ids `[b, ctx]`, one no-grad forward recording every name in
    ``names`` (exact names of per-token activations); yields ``{name: [n_kept, d]}`` on the CPU
    in ``dtype`` (``d = n_heads * d_head`` for per-head names, see `token_width`), tokens in
    row-major (batch, position) order.

    The forward stops after the deepest block it needs (when every name is inside a block).
    skip_special, skip_first: the `token_mask` policy. outlier_ratio: also leave out the
    tokens that are `massive_tokens` outliers of any name (the median taken over the batch's
    kept tokens); None keeps them.
    """
    names = [check_per_token(model.hook_point(name)).name for name in names]  # exact names, one row per token
    for batch in batches:
        acts = model.run_with_cache(batch, names, stop_early=True)[1]
        keep = token_mask(model, batch, skip_special=skip_special, skip_first=skip_first).reshape(-1)
        kept = {name: acts[name].flatten(2).reshape(keep.shape[0], -1)[keep.to(acts[name].device)] for name in names}
        if outlier_ratio is not None:
            massive = torch.zeros(int(keep.sum()), dtype=torch.bool)
            for value in kept.values():
                massive |= massive_tokens(value, outlier_ratio).cpu()
            kept = {name: value[~massive.to(value.device)] for name, value in kept.items()}
        yield {name: value.to("cpu", dtype) for name, value in kept.items()}


def harvest_all(model: HookedModel, names: Sequence[str], tokens: torch.Tensor, *, batch_size: int = 8,
                skip_special: bool = True, skip_first: bool = True, outlier_ratio: float | None = None,
                dtype: torch.dtype = torch.float32) -> Chunk:
    """`harvest` over ``tokens`` `[n_seq, ctx]` in batches of ``batch_size`` rows, concatenated:
    ``{name: [n_kept, d]}`` on the CPU."""
    if tokens.ndim != 2 or not len(tokens) or batch_size < 1:
        raise SelectionError(f"harvest_all needs token ids [n_seq >= 1, ctx] and a positive batch size, got "
                             f"shape {tuple(tokens.shape)} and batch_size={batch_size}")
    return cat_chunks(list(harvest(model, names, tokens.split(batch_size), skip_special=skip_special,
                                   skip_first=skip_first, outlier_ratio=outlier_ratio, dtype=dtype)))


def n_rows(chunk: Chunk) -> int:
    """Number of tokens in ``chunk``."""
    return next(iter(chunk.values())).shape[0]


def cat_chunks(chunks: Sequence[Chunk]) -> Chunk:
    """``chunks`` joined along the token axis, name by name."""
    if len(chunks) == 1:
        return chunks[0]
    return {name: torch.cat([c[name] for c in chunks]) for name in chunks[0]}


class ShuffleBuffer:
    """Mixes tokens across many sequences: holds up to ``capacity`` tokens and, once full,
    emits random batches from it, so consecutive batches do not come from a few documents."""

    def __init__(self, capacity: int, *, seed: int = 0):
        if capacity < 1:
            raise SelectionError(f"buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)

    def mix(self, chunks: Iterable[Chunk], batch_size: int) -> Iterator[Chunk]:
        """Batches ``{name: [batch_size, d]}`` (the last one smaller) of every token of ``chunks``,
        each exactly once, in an order shuffled within the buffer."""
        held: Chunk = {}
        for chunk in chunks:
            held = chunk if not held else cat_chunks([held, chunk])
            while n_rows(held) >= self.capacity:
                held = self._shuffled(held)
                n_out = max(batch_size, (n_rows(held) - self.capacity // 2) // batch_size * batch_size)
                for start in range(0, n_out, batch_size):
                    yield {k: v[start : start + batch_size] for k, v in held.items()}
                held = {k: v[n_out:] for k, v in held.items()}
        if held and n_rows(held):
            held = self._shuffled(held)
            for start in range(0, n_rows(held), batch_size):
                yield {k: v[start : start + batch_size] for k, v in held.items()}

    def _shuffled(self, held: Chunk) -> Chunk:
        order = torch.randperm(n_rows(held), generator=self.generator)
        return {k: v[order] for k, v in held.items()}
