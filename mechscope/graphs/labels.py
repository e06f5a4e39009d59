"""Offline labels for the features of a graph, from their top-activating contexts: one pass
over a corpus (one forward per batch serves every layer) keeps each chosen feature's
strongest tokens, and the label names them with the tokens its decoder promotes.

    labels = ms.feature_labels(model, transcoders, windows, graph.feature_index[:, [0, 2]])
    labels[(12, 1033)]      # "' Paris' (France is→Paris, of→Paris) | promotes ' Paris', ' Lyon'"
    pruned.save_frontend("graphs/", "capital", labels=labels)

Position 0, special tokens and norm outliers are left out (`data.harvest`), as in training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.harvest import massive_tokens, token_mask
from ..errors import SelectionError
from ..models.hooked import HookedModel
from ..models.tokens import token_texts
from .transcoders import TranscoderSet


@dataclass
class FeatureContexts:
    """One feature's strongest activations: ``values`` `[n]` (descending), ``windows`` /
    ``positions`` `[n]` where they are."""

    values: torch.Tensor
    windows: torch.Tensor
    positions: torch.Tensor


def top_contexts(model: HookedModel, transcoders: TranscoderSet, windows: torch.Tensor,
                 features: Sequence[tuple[int, int]], *, n_top: int = 8, batch_size: int = 8,
                 outlier_ratio: float | None = 10.0) -> dict[tuple[int, int], FeatureContexts]:
    """The ``n_top`` strongest (window, position) of each ``(layer, latent)`` in ``features``
    over token ``windows`` `[n, ctx]`."""
    features = sorted({(int(l), int(f)) for l, f in features})
    if not features:
        raise SelectionError("top_contexts needs at least one (layer, latent)")
    by_layer: dict[int, list[int]] = {}
    for layer, latent in features:
        if not 0 <= latent < transcoders[layer].cfg.d_sae:
            raise SelectionError(f"latent {latent} is out of range for the transcoder of layer {layer}")
        by_layer.setdefault(layer, []).append(latent)
    names = [transcoders[layer].cfg.hook_name for layer in by_layer]
    best = {key: (torch.full((n_top,), -float("inf")), torch.zeros(n_top, dtype=torch.long),
                  torch.zeros(n_top, dtype=torch.long)) for key in features}
    width = windows.shape[1]
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        _, cache = model.run_with_cache(batch, names, stop_early=True)
        counted = token_mask(model, batch)
        with torch.no_grad():
            for layer, latents in by_layer.items():
                tc = transcoders[layer]
                x = cache[tc.cfg.hook_name].to(tc.W_enc.dtype)
                keep = counted.to(x.device) & ~massive_tokens(x, outlier_ratio)
                acts = tc.encode(x)[..., latents].float().cpu() * keep[..., None].cpu()  # [b, ctx, n]
                flat = acts.reshape(-1, len(latents))
                k = min(n_top, flat.shape[0])
                values, where = flat.topk(k, dim=0)
                for column, latent in enumerate(latents):
                    old_v, old_w, old_p = best[(layer, latent)]
                    new_w = start + where[:, column] // width
                    new_p = where[:, column] % width
                    v = torch.cat([old_v, values[:, column]])
                    order = v.argsort(descending=True, stable=True)[:n_top]
                    best[(layer, latent)] = (v[order], torch.cat([old_w, new_w])[order], torch.cat([old_p, new_p])[order])
    return {key: FeatureContexts(v[v > 0], w[v > 0], p[v > 0]) for key, (v, w, p) in best.items()}


def feature_labels(model: HookedModel, transcoders: TranscoderSet, windows: torch.Tensor,
                   features: Sequence[tuple[int, int]] | torch.Tensor, *, n_top: int = 8, n_promoted: int = 3,
                   batch_size: int = 8) -> dict[tuple[int, int], str]:
    """``{(layer, latent): label}``: the feature's most frequent peak tokens among its ``n_top``
    strongest contexts (with the token before each), and the ``n_promoted`` tokens its decoder
    row raises most directly (through the final norm's weight and the unembedding)."""
    if isinstance(features, torch.Tensor):
        features = [tuple(row) for row in features.tolist()]
    contexts = top_contexts(model, transcoders, windows, features, n_top=n_top, batch_size=batch_size)
    w_u = model.weights(fold_norm=True).W_U.detach().float()  # [d_model, d_vocab], final norm weight folded in
    labels = {}
    for (layer, latent), found in contexts.items():
        peaks = Counter()
        examples = []
        for w, p in zip(found.windows.tolist(), found.positions.tolist()):
            text = token_texts(model.tokenizer, windows[w, max(0, p - 1) : p + 1].tolist()) if model.tokenizer \
                else [str(int(t)) for t in windows[w, max(0, p - 1) : p + 1]]
            peaks[text[-1]] += 1
            examples.append("→".join(t.strip() or repr(t) for t in text))
        promoted = (transcoders[layer].W_dec[latent].detach().float() @ w_u).topk(n_promoted).indices.tolist()
        promoted_text = ", ".join(repr(t) for t in (token_texts(model.tokenizer, promoted) if model.tokenizer
                                                      else [str(i) for i in promoted]))
        if not examples:
            labels[(layer, latent)] = f"never fires here | promotes {promoted_text}"
            continue
        top = ", ".join(repr(t) for t, _ in peaks.most_common(2))
        labels[(layer, latent)] = f"{top} ({', '.join(examples[:2])}) | promotes {promoted_text}"
    return labels
