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

import numpy as np
import pandas as pd
import torch

from ..errors import SelectionError
from ..models.hooked import HookedModel, TokensLike
from ..models.selection import PerPrompt, single_position
from ..result import Result
from ..viz import figures

Direction = int | tuple[int, int] | torch.Tensor


@dataclass
class DLAResult(Result):
    """Contributions `[batch, n_components]` with their ``labels``.

    Labels: ``embed``, ``pos_embed`` (if any), ``L{l}H{h}`` for each head, ``L{l}.attn_bias``,
    ``L{l}.mlp`` for each layer, and ``bias`` (final-norm and unembedding biases).
    ``total`` `[batch]` is their sum; ``logit`` `[batch]` the model's own (pre-softcap)
    value along the direction, which ``total`` equals up to float error.

    Protocol (`mechscope.result`): ``to_dataframe()`` has a row per (prompt, component) with
    its kind, layer and head; ``top(n)`` ranks components by |contribution| averaged over
    prompts (``top(n, prompt=0)`` for one prompt, ``top(n, kind="head")`` for heads only);
    ``plot()`` draws a layer x head heatmap and the other components as bars.
    """

    labels: list[str]
    values: torch.Tensor
    logit: torch.Tensor
    n_layers: int
    n_heads: int

    _value = "value"
    _signed = True
    _mean_over = ("prompt",)

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

    def summary(self) -> str:
        return (f"direct logit attribution: {len(self.labels)} components x {self.values.shape[0]} prompts; "
                f"mean logit {float(self.logit.float().mean()):.4f} = mean sum of parts {float(self.total.float().mean()):.4f}")

    def _parts(self) -> tuple[list[str], list[int | None], list[int | None]]:
        """Each label's kind, layer and head."""
        kinds, layers, heads = [], [], []
        for label in self.labels:
            kind, layer, head = label, None, None
            if label.startswith("L") and "H" in label and "." not in label:
                layer, head = (int(v) for v in label[1:].split("H"))
                kind = "head"
            elif label.startswith("L") and "." in label:
                number, kind = label[1:].split(".", 1)
                layer = int(number)
            kinds.append(kind)
            layers.append(layer)
            heads.append(head)
        return kinds, layers, heads

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (prompt, component): ``component`` (its label), ``kind`` (embed,
        pos_embed, head, attn_bias, mlp, bias), ``layer`` and ``head`` (empty where they do not
        apply) and ``value``, the contribution to the logit (difference)."""
        batch, n = self.values.shape
        kinds, layers, heads = self._parts()
        prompt, component = np.indices((batch, n)).reshape(2, -1)
        return pd.DataFrame({
            "prompt": prompt,
            "component": np.asarray(self.labels, dtype=object)[component],
            "kind": np.asarray(kinds, dtype=object)[component],
            "layer": pd.array([layers[c] for c in component], dtype="Int64"),
            "head": pd.array([heads[c] for c in component], dtype="Int64"),
            "value": self.values.detach().float().cpu().reshape(-1).numpy().astype(float),
        })

    def plot(self, value: str | None = None, **selection):
        """Heads as a layer x head heatmap and the other components (embeddings, attention
        biases, MLPs, biases) as bars below, both diverging at 0; the mean over prompts unless
        ``prompt=`` is given."""
        frame = self.plot_data(value, **selection)
        column = self.plot_column(value)
        which = ("mean over prompts" if "prompt" not in selection and self.values.shape[0] > 1
                 else f"prompt {selection.get('prompt', 0)}")
        parts = []
        heads = frame[frame["kind"] == "head"]
        if len(heads):
            z = heads.pivot(index="layer", columns="head", values=column)
            parts.append(figures.heatmap(z.to_numpy(float), [f"H{h}" for h in z.columns], [f"L{l}" for l in z.index],
                                         title="heads", signed=True, x_label="head", y_label="layer",
                                         z_label="logit contribution"))
        rest = frame[frame["kind"] != "head"]
        if len(rest):
            parts.append(figures.bar(rest["component"].tolist(), rest[column].to_numpy(float), title="other components",
                                     signed=True, x_label="component", y_label="logit contribution"))
        title = f"Direct logit attribution ({which})"
        if len(parts) == 1:
            parts[0].update_layout(title={"text": f"{title}: {parts[0].layout.title.text}"})
            return parts[0]
        return figures.stack(parts, title=title, row_heights=[0.7, 0.3])


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
        raise SelectionError(f"a direction tensor must be [d_vocab] = [{model.cfg.d_vocab}], got {tuple(direction.shape)}")
    return w_u @ direction, b_u @ direction


def direct_logit_attribution(model: HookedModel, tokens: TokensLike, direction: Direction, *,
                             position: int | PerPrompt = -1,
                             attention_mask: torch.Tensor | None = None) -> DLAResult:
    """Attribute the logit (difference) at ``position`` to every component.

    direction: a token id, a pair ``(a, b)`` for logit(a) - logit(b), or a `[d_vocab]` vector.
    position: an int, or ``PerPrompt`` (one position per prompt). In a padded batch a negative
      int counts real tokens from each prompt's end (the default -1: each prompt's last real
      token, with either padding side) and a non-negative one indexes the padded sequence.
    With a final-logit softcap (Gemma 2) the attribution is of the logits before the cap.
    """
    cfg = model.cfg
    input_ids, mask = model.prepare_inputs(tokens, attention_mask)
    if not isinstance(position, PerPrompt):
        position = PerPrompt(single_position(position, mask, *input_ids.shape))
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

