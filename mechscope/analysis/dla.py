"""Direct logit attribution: how much each component writes along a logit direction.

The final residual at the chosen position is the sum of its parts: the embeddings, every
attention head's ``head_out``, each layer's attention output bias, and every MLP's
output. The final norm is made linear by freezing its scale at the clean run's final
residual (`FrozenNorm`), so each part's contribution is
``frozen_norm(part) @ W_U[:, direction]`` and the parts, plus a constant for the norm's and
the unembedding's biases, sum exactly to the (pre-softcap) logit or logit difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..models.hooked import HookedModel, TokensLike
from ..models.selection import PerPrompt
from ..viz.heatmap import heatmap_html

Direction = int | tuple[int, int] | torch.Tensor


@dataclass
class DLAResult:
    """Contributions `[batch, n_components]` with their ``labels``.

    Labels: ``embed``, ``pos_embed`` (if any), ``L{l}H{h}`` for each head, ``L{l}.attn_bias``,
    ``L{l}.mlp`` for each layer, and ``bias`` (final-norm and unembedding biases).
    ``total`` `[batch]` is their sum; ``logit`` `[batch]` the model's own (pre-softcap)
    value along the direction, which ``total`` equals up to float error.
    """

    labels: list[str]
    values: torch.Tensor
    logit: torch.Tensor
    n_layers: int
    n_heads: int

    @property
    def total(self) -> torch.Tensor:
        return self.values.sum(-1)

    def _index(self, label: str) -> int:
        return self.labels.index(label)

    def per_head(self) -> torch.Tensor:
        """`[batch, n_layers, n_heads]`."""
        idx = [self._index(f"L{l}H{h}") for l in range(self.n_layers) for h in range(self.n_heads)]
        return self.values[:, idx].reshape(-1, self.n_layers, self.n_heads)

    def per_layer(self) -> torch.Tensor:
        """`[batch, n_layers, 2]`: attention (heads + bias) and MLP of each layer."""
        attn = self.per_head().sum(-1) + self.values[:, [self._index(f"L{l}.attn_bias") for l in range(self.n_layers)]]
        mlp = self.values[:, [self._index(f"L{l}.mlp") for l in range(self.n_layers)]]
        return torch.stack([attn, mlp], dim=-1)

    def top(self, n: int = 10, prompt: int | None = None) -> list[tuple[str, float]]:
        """The ``n`` largest-magnitude components (averaged over prompts unless ``prompt``)."""
        values = self.values.mean(0) if prompt is None else self.values[prompt]
        order = values.abs().argsort(descending=True)[:n]
        return [(self.labels[i], float(values[i])) for i in order]

    def to_dataframe(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.values.cpu().numpy(), columns=self.labels)
        frame.index.name = "prompt"
        return frame

    def head_heatmap(self, prompt: int | None = None) -> str:
        values = self.per_head().mean(0) if prompt is None else self.per_head()[prompt]
        return heatmap_html(values, [f"L{l}" for l in range(self.n_layers)], [f"H{h}" for h in range(self.n_heads)],
                            title="direct logit attribution per head")

    def _repr_html_(self) -> str:
        return self.head_heatmap()


def logit_direction(model: HookedModel, direction: Direction) -> tuple[torch.Tensor, torch.Tensor]:
    """(unembedding direction `[d_model]`, bias along it) for a token, a token pair (a - b),
    or an explicit `[d_vocab]` weighting of logits."""
    w_u, b_u = model.W_U, model.b_U
    if isinstance(direction, int):
        return w_u[:, direction], b_u[direction]
    if isinstance(direction, tuple):
        good, bad = direction
        return w_u[:, good] - w_u[:, bad], b_u[good] - b_u[bad]
    direction = torch.as_tensor(direction, dtype=w_u.dtype, device=w_u.device)
    if direction.shape != (model.cfg.d_vocab,):
        raise ValueError(f"a direction tensor must be [d_vocab] = [{model.cfg.d_vocab}], got {tuple(direction.shape)}")
    return w_u @ direction, b_u @ direction


def direct_logit_attribution(model: HookedModel, tokens: TokensLike, direction: Direction, *,
                             position: int | PerPrompt = -1,
                             attention_mask: torch.Tensor | None = None) -> DLAResult:
    """Attribute the logit (difference) at ``position`` to every component.

    direction: a token id, a pair ``(a, b)`` for logit(a) - logit(b), or a `[d_vocab]` vector.
    position: an int for all prompts, or ``PerPrompt`` (e.g. each prompt's last real token).
    With a final-logit softcap (Gemma 2) the attribution is of the logits before the cap.
    """
    cfg = model.cfg
    input_ids, mask = model.prepare_inputs(tokens, attention_mask)
    final = f"blocks.{cfg.n_layers - 1}.resid_post"
    names = ["embed", "pos_embed", "blocks.*.attn.head_out", "blocks.*.mlp.out", final]
    names = [n for n in names if n != "pos_embed" or "pos_embed" in model.names]
    _, cache = model.run_with_cache(input_ids, names, positions=position, attention_mask=mask)
    w_dir, b_dir = logit_direction(model, direction)
    w_dir = w_dir.float()
    frozen = model.final_norm_at(cache[final].float())

    def project(part: torch.Tensor, head_axis: bool = False) -> torch.Tensor:
        return frozen.apply(part.float(), head_axis=head_axis).float() @ w_dir

    labels, columns = ["embed"], [project(cache["embed"])]
    if "pos_embed" in cache:
        labels.append("pos_embed")
        columns.append(project(cache["pos_embed"]))
    sandwich = cfg.attn_out_normed
    for layer in range(cfg.n_layers):
        heads = project(cache[f"blocks.{layer}.attn.head_out"], head_axis=True)  # [batch, heads]
        labels += [f"L{layer}H{h}" for h in range(cfg.n_heads)]
        columns += list(heads.unbind(-1))
        bias = torch.zeros_like(heads[:, 0]) if sandwich else project(
            model.b_O[layer].float().expand_as(cache[final]))
        labels += [f"L{layer}.attn_bias", f"L{layer}.mlp"]
        columns += [bias, project(cache[f"blocks.{layer}.mlp.out"])]
    constant = b_dir.float()
    if frozen.bias is not None:
        constant = constant + frozen.bias.float() @ w_dir
    labels.append("bias")
    columns.append(constant.expand_as(columns[0]))
    normed = model.final_norm(cache[final]).float()
    logit = normed @ w_dir + b_dir.float()
    return DLAResult(labels, torch.stack(columns, dim=-1).detach(), logit.detach(), cfg.n_layers, cfg.n_heads)

