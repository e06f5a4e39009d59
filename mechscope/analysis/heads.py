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

import numpy as np
import pandas as pd
import torch

from ..errors import SelectionError
from ..models.hooked import HookedModel, TokensLike
from ..result import Result
from ..viz import figures

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
            raise SelectionError(f"unknown detector {kind!r}; known: {', '.join(KINDS)}")
    return masks


@dataclass
class HeadScores(Result):
    """``scores[kind]``: `[n_layers, n_heads]` mean attention mass on the detector's keys.

    Protocol (`mechscope.result`): ``to_dataframe()`` has a row per (kind, layer, head);
    ``top(n, kind="induction")`` the highest-scoring heads of a kind; ``plot()`` one
    layer x head heatmap per kind (``kind=`` picks some) on a 0-1 scale.
    """

    scores: dict[str, torch.Tensor]

    _value = "score"
    _signed = False

    def summary(self) -> str:
        first = next(iter(self.scores.values()))
        return f"head scores of {first.shape[0]} layers x {first.shape[1]} heads for {', '.join(self.scores)}"

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (kind, layer, head) with its ``score``."""
        frames = []
        for kind, values in self.scores.items():
            layer, head = np.indices(tuple(values.shape)).reshape(2, -1)
            frames.append(pd.DataFrame({"kind": kind, "layer": layer, "head": head,
                                        "score": values.detach().float().cpu().reshape(-1).numpy().astype(float)}))
        return pd.concat(frames, ignore_index=True)

    def plot(self, value: str | None = None, **selection):
        """One layer x head heatmap per detector kind, on one 0-1 colour scale."""
        kinds = selection.get("kind")
        for kind in [kinds] if isinstance(kinds, str) else list(kinds or []):
            if kind not in self.scores:
                raise SelectionError(f"these head scores have kinds {list(self.scores)}, not {kind!r}")
        frame = self.plot_data(value, **selection)
        column = self.plot_column(value)
        panels = []
        for kind, part in frame.groupby("kind", sort=False):
            z = part.pivot(index="layer", columns="head", values=column)
            panels.append({"z": z.to_numpy(float), "x": [f"H{h}" for h in z.columns], "y": [f"L{l}" for l in z.index],
                           "title": kind})
        cols = min(len(panels), 4)
        return figures.facet_heatmaps(panels, title="Attention-head detector scores (attention mass on marked keys)",
                                      cols=cols, x_label="head", y_label="layer", z_label=column)


def head_scores(model: HookedModel, tokens: TokensLike, kinds: tuple[str, ...] = KINDS, *,
                custom: dict[str, torch.Tensor] | None = None, average: str = "marked",
                attention_mask: torch.Tensor | None = None) -> HeadScores:
    """Score every head for each detector in one forward pass (patterns are reduced in the
    hooks, never stored). ``average``: "marked" (queries with a marked key) or "all" (every
    real query). ``attention_mask`` excludes padded queries and keys."""
    if average not in ("marked", "all"):
        raise SelectionError(f"average must be 'marked' or 'all', got {average!r}")
    input_ids, mask = model.prepare_inputs(tokens, attention_mask)
    masks = detection_masks(input_ids.cpu(), tuple(kinds))
    batch, n = input_ids.shape
    for name, custom_mask in (custom or {}).items():
        custom_mask = torch.as_tensor(custom_mask, dtype=torch.bool)
        if custom_mask.shape[-2:] != (n, n):
            raise SelectionError(f"custom detector {name!r} must be [pos, pos] or [batch, pos, pos] with pos = {n}")
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
