"""Attention-head detectors: previous-token, duplicate-token, induction and first-token heads.

Each detector marks, for every query position, a set of key positions ("where this kind of
head attends"); a head's score is the attention mass it puts on the marked keys, averaged
over the (prompt, query) pairs that have any marked key. Masks come from the tokens alone,
so they work on any text, and are computed once for all layers:

- previous_token: key q-1 (queries q >= 1).
- first_token: key 0 (queries q >= 1) -- the attention sink / BOS head.
- duplicate_token: earlier keys holding the same token as the query.
- induction (prefix matching): keys right after an earlier occurrence of the query's token
  (on repeated random tokens, the token the model should copy next).
Custom detectors are boolean masks `[pos, pos]` or `[batch, pos, pos]` (query x key).

``average="all"`` divides by every query instead, which is TransformerLens's
``detect_head`` score (error_measure "mul"); on repeated random tokens that is about half
the default, since only the repeated half has keys to mark.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..models.hooked import HookedModel, TokensLike
from ..viz.heatmap import heatmap_html

KINDS = ("previous_token", "first_token", "duplicate_token", "induction")


def detection_masks(tokens: torch.Tensor, kinds: tuple[str, ...] = KINDS) -> dict[str, torch.Tensor]:
    """Boolean masks `[batch, query, key]` marking where each kind of head attends."""
    batch, n = tokens.shape
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    earlier = (k < q).expand(batch, n, n)
    same = tokens[:, :, None] == tokens[:, None, :]  # [b, q, k]: token[q] == token[k]
    masks = {}
    for kind in kinds:
        if kind == "previous_token":
            masks[kind] = (k == q - 1).expand(batch, n, n)
        elif kind == "first_token":
            masks[kind] = ((k == 0) & (q >= 1)).expand(batch, n, n)
        elif kind == "duplicate_token":
            masks[kind] = same & earlier
        elif kind == "induction":
            after = torch.zeros_like(same)
            after[:, :, 1:] = same[:, :, :-1] & earlier[:, :, :-1]  # key k: token[k-1] == token[q], k-1 < q
            masks[kind] = after & earlier
        else:
            raise ValueError(f"unknown detector {kind!r}; known: {', '.join(KINDS)}")
    return masks


@dataclass
class HeadScores:
    """``scores[kind]``: `[n_layers, n_heads]` mean attention mass on the detector's keys."""

    scores: dict[str, torch.Tensor]

    def top(self, kind: str, n: int = 5) -> list[tuple[int, int, float]]:
        """The ``n`` highest-scoring heads as ``(layer, head, score)``."""
        values = self.scores[kind]
        flat = values.flatten().argsort(descending=True)[:n]
        return [(int(i) // values.shape[1], int(i) % values.shape[1], float(values.flatten()[i])) for i in flat]

    def to_dataframe(self) -> pd.DataFrame:
        first = next(iter(self.scores.values()))
        layers, heads = first.shape
        rows = [{"layer": l, "head": h, **{kind: float(v[l, h]) for kind, v in self.scores.items()}}
                for l in range(layers) for h in range(heads)]
        return pd.DataFrame(rows)

    def heatmap(self, kind: str) -> str:
        values = self.scores[kind]
        return heatmap_html(values, [f"L{l}" for l in range(values.shape[0])],
                            [f"H{h}" for h in range(values.shape[1])], title=f"{kind} score", diverging=False)

    def _repr_html_(self) -> str:
        return "".join(self.heatmap(kind) for kind in self.scores)


def head_scores(model: HookedModel, tokens: TokensLike, kinds: tuple[str, ...] = KINDS, *,
                custom: dict[str, torch.Tensor] | None = None, average: str = "marked",
                attention_mask: torch.Tensor | None = None) -> HeadScores:
    """Score every head for each detector in one forward pass (patterns are reduced in the
    hooks, never stored). ``average``: "marked" (queries with a marked key) or "all" (every
    real query). ``attention_mask`` excludes padded queries and keys."""
    if average not in ("marked", "all"):
        raise ValueError(f"average must be 'marked' or 'all', got {average!r}")
    input_ids, mask = model.prepare_inputs(tokens, attention_mask)
    masks = detection_masks(input_ids.cpu(), tuple(kinds))
    batch, n = input_ids.shape
    for name, custom_mask in (custom or {}).items():
        custom_mask = torch.as_tensor(custom_mask, dtype=torch.bool)
        if custom_mask.shape[-2:] != (n, n):
            raise ValueError(f"custom detector {name!r} must be [pos, pos] or [batch, pos, pos] with pos = {n}")
        masks[name] = custom_mask.expand(batch, n, n)
    if mask is not None:
        valid = mask.bool().cpu()
        masks = {kind: m & valid[:, :, None] & valid[:, None, :] for kind, m in masks.items()}
    device = input_ids.device
    masks = {kind: m.to(device) for kind, m in masks.items()}
    real = torch.ones(batch, n, dtype=torch.bool, device=device) if mask is None else mask.bool()
    counted = {kind: m.any(-1) if average == "marked" else real for kind, m in masks.items()}  # [b, q]
    scores = {kind: torch.zeros(model.cfg.n_layers, model.cfg.n_heads) for kind in masks}

    def score(pattern: torch.Tensor, ctx) -> None:
        pattern = pattern.float()
        for kind, m in masks.items():
            mass = (pattern * m[:, None]).sum(-1)  # [b, h, q]
            rows = counted[kind][:, None].expand_as(mass)
            total = rows.sum(dim=(0, 2)).clamp(min=1)
            scores[kind][ctx.layer] = ((mass * rows).sum(dim=(0, 2)) / total).cpu()

    with torch.no_grad(), model.hooks({"blocks.*.attn.pattern": score}):
        model(input_ids, mask)
    return HeadScores(scores)
