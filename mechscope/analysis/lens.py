"""The logit lens: read the residual stream at every layer through the model's own unembedding.

Each residual-stream point (``blocks.0.resid_pre``, then every ``resid_post``; with
``sublayers`` also every ``resid_mid``) goes through the model's final norm, unembedding
and final softcap (`HookedModel.unembed`), exactly as the last layer's output does. So the
last row reproduces the model's distribution (KL 0), unlike lenses built on
``output_hidden_states``, whose last entry is already normalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..models.hooked import HookedModel, TokensLike
from ..viz.heatmap import heatmap_html

Target = int | str | torch.Tensor | None


@dataclass
class LensResult:
    """Per (layer, prompt, position) lens readings.

    labels: the residual-stream names read, in order (``L`` of them).
    top_ids, top_logprobs: `[L, batch, pos, k]`.
    kl_to_final: `[L, batch, pos]`, KL(final distribution || lens distribution) in nats.
    target_ids: `[batch, pos]` (-1 where there is no target) or None.
    target_logprob, target_rank: `[L, batch, pos]` (rank 0 = top) or None.
    str_tokens: the input tokens as strings per prompt (when a tokenizer is known).
    """

    labels: list[str]
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    kl_to_final: torch.Tensor
    target_ids: torch.Tensor | None
    target_logprob: torch.Tensor | None
    target_rank: torch.Tensor | None
    str_tokens: list[list[str]] | None = None
    decode: object = None  # callable id -> str, for tables

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (layer, prompt, position)."""
        n_layers, batch, pos, _ = self.top_ids.shape
        rows = []
        for l in range(n_layers):
            for b in range(batch):
                for p in range(pos):
                    top = int(self.top_ids[l, b, p, 0])
                    row = {
                        "layer": self.labels[l],
                        "prompt": b,
                        "pos": p,
                        "top_token": self.decode(top) if self.decode else top,
                        "top_logprob": float(self.top_logprobs[l, b, p, 0]),
                        "kl_to_final": float(self.kl_to_final[l, b, p]),
                    }
                    if self.target_rank is not None:
                        row["target_logprob"] = float(self.target_logprob[l, b, p])
                        row["target_rank"] = int(self.target_rank[l, b, p])
                    rows.append(row)
        return pd.DataFrame(rows)

    def heatmap(self, prompt: int = 0, metric: str | None = None) -> str:
        """HTML heatmap, layers x positions, of ``metric``: "rank" (log10(1 + rank) of the
        target, cells show the top token) or "kl" (default when there is no target)."""
        metric = metric or ("rank" if self.target_rank is not None else "kl")
        if metric == "rank":
            values = torch.log10(1 + self.target_rank[:, prompt].float())
            title = "log10(1 + rank of target)"
        elif metric == "kl":
            values = self.kl_to_final[:, prompt]
            title = "KL(final || lens), nats"
        else:
            raise ValueError(f"metric must be 'rank' or 'kl', got {metric!r}")
        cols = self.str_tokens[prompt] if self.str_tokens else [str(p) for p in range(values.shape[1])]
        text = None
        if self.decode:
            text = [[self.decode(int(t)) for t in row] for row in self.top_ids[:, prompt, :, 0]]
        return heatmap_html(values, self.labels, cols, title=title, diverging=False, cell_text=text)

    def _repr_html_(self) -> str:
        return self.heatmap()


def _targets(target: Target, tokens: torch.Tensor) -> torch.Tensor | None:
    """Target ids `[batch, pos]`, -1 where undefined."""
    batch, pos = tokens.shape
    if target is None:
        return None
    if isinstance(target, str):
        if target != "next":
            raise ValueError(f"target must be a token id, a tensor or 'next', got {target!r}")
        out = torch.full_like(tokens, -1)
        out[:, :-1] = tokens[:, 1:]
        return out
    target = torch.as_tensor(target, dtype=torch.long, device=tokens.device)
    if target.ndim == 0:
        return target.expand(batch, pos).clone()
    if target.ndim == 1 and target.shape[0] == batch:
        return target[:, None].expand(batch, pos).clone()
    if target.shape == (batch, pos):
        return target
    raise ValueError(f"target of shape {tuple(target.shape)} fits neither [batch] nor [batch, pos] = {(batch, pos)}")


def logit_lens(model: HookedModel, tokens: TokensLike, *, target: Target = None, k: int = 5,
               sublayers: bool = False, attention_mask: torch.Tensor | None = None) -> LensResult:
    """Logit lens over every layer and position.

    target: a token id (all positions), LongTensor `[batch]` or `[batch, pos]`, or
      ``"next"`` (each position's next input token).
    sublayers: also read ``resid_mid`` (after attention, before the MLP).
    """
    input_ids, mask = model.prepare_inputs(tokens, attention_mask)
    names = ["blocks.0.resid_pre"]
    for layer in range(model.cfg.n_layers):
        if sublayers and f"blocks.{layer}.resid_mid" in model.names:
            names.append(f"blocks.{layer}.resid_mid")
        names.append(f"blocks.{layer}.resid_post")
    logits, cache = model.run_with_cache(input_ids, names, attention_mask=mask)
    final = torch.log_softmax(logits.float(), dim=-1)
    final_probs = final.exp()
    neg_entropy = torch.linalg.vecdot(final_probs, final)  # [batch, pos]; KL = this - E_final[lens lp]
    targets = _targets(target, input_ids)
    top_ids, top_lp, kls, t_lp, t_rank = [], [], [], [], []
    with torch.no_grad():
        for name in names:
            lp = torch.log_softmax(model.unembed(cache[name]).float(), dim=-1)  # [batch, pos, vocab]
            top = lp.topk(k, dim=-1)
            top_ids.append(top.indices)
            top_lp.append(top.values)
            kls.append(neg_entropy - torch.linalg.vecdot(final_probs, lp))
            if targets is not None:
                safe = targets.clamp(min=0)[..., None]
                value = lp.gather(-1, safe)
                t_lp.append(torch.where(targets >= 0, value[..., 0], torch.nan))
                t_rank.append((lp > value).sum(-1))
            del lp
    str_tokens = None
    decode = None
    if model.tokenizer is not None:
        str_tokens = [model.to_str_tokens(row) for row in input_ids]
        decode = lambda i: model.to_string([i])  # noqa: E731
    return LensResult(
        labels=names,
        top_ids=torch.stack(top_ids),
        top_logprobs=torch.stack(top_lp),
        kl_to_final=torch.stack(kls),
        target_ids=targets,
        target_logprob=torch.stack(t_lp) if targets is not None else None,
        target_rank=torch.stack(t_rank) if targets is not None else None,
        str_tokens=str_tokens,
        decode=decode,
    )
