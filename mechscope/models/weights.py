"""Weight views in canonical orientation, whatever the HF layout (Linear, Conv1D, fused qkv).

``W_Q[l]`` `[n_heads, d_model, d_head]`; ``W_K[l]``/``W_V[l]`` `[n_kv_heads, d_model,
d_head]` (``n_heads`` with ``expand_kv``); ``W_O[l]`` `[n_heads, d_head, d_model]`;
``W_in[l]``/``W_gate[l]`` `[d_model, d_mlp]`; ``W_out[l]`` `[d_mlp, d_model]`; ``W_E``
`[d_vocab, d_model]`; ``W_pos`` `[n_ctx, d_model]`; ``W_U`` `[d_model, d_vocab]`.
Absent biases read as zeros. Without folding, per-layer views share storage with the
live parameters (no copy). With ``fold_norm`` the preceding norm's scale (and a
LayerNorm's bias) is folded in: ``ln(x) @ W == normalize(x) @ W_folded + b_folded`` where
``normalize`` divides by the rms (RMSNorm) or centres and divides by the std (LayerNorm).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from .adapters.base import FusedQKV, Proj
from .norms import norm_bias, norm_weight

if TYPE_CHECKING:
    from .hooked import HookedModel


class LayerWeights:
    """A per-layer weight, indexable as ``w[l]``, ``w[l, h]`` or ``w[a:b]`` (stacked)."""

    def __init__(self, n_layers: int, get: Callable[[int], torch.Tensor]):
        self._n = n_layers
        self._get = get

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self._get(i) for i in range(self._n))

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self[key[0]][key[1:]]
        if isinstance(key, slice):
            return torch.stack([self._get(i) for i in range(self._n)[key]])
        if not -self._n <= key < self._n:
            raise IndexError(f"layer {key} out of range for {self._n} layers")
        return self._get(key % self._n)

    def stack(self) -> torch.Tensor:
        """All layers stacked: `[n_layers, ...]` (a copy)."""
        return self[:]


def _in_out(module: nn.Module, conv1d: bool) -> torch.Tensor:
    """Weight as `[in, out]`."""
    return module.weight if conv1d else module.weight.T


def _bias(module: nn.Module, n_out: int, like: torch.Tensor) -> torch.Tensor:
    bias = getattr(module, "bias", None)
    return bias if bias is not None else like.new_zeros(n_out)


class Weights:
    """Canonical weight views of a HookedModel (see module docstring)."""

    def __init__(self, model: HookedModel, fold_norm: bool = False, expand_kv: bool = False):
        self._model = model
        self._layout = model.adapter.components
        self._cfg = model.cfg
        self.fold_norm = fold_norm
        self.expand_kv = expand_kv

    # ------------------------------------------------------------ helpers
    def _module(self, layer: int | None, path: str) -> nn.Module:
        root = self._model.hf
        if layer is None:
            return root.get_submodule(path)
        return root.get_submodule(f"{self._model.adapter.layers}.{layer}.{path}")

    def _proj(self, layer: int, proj: Proj) -> tuple[torch.Tensor, torch.Tensor]:
        module = self._module(layer, proj.path)
        weight = _in_out(module, proj.conv1d)
        return weight, _bias(module, weight.shape[1], weight)

    def _qkv(self, layer: int, which: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight `[heads, d_model, d_head]` and bias `[heads, d_head]` of q (0), k (1) or v (2)."""
        cfg, layout = self._cfg, self._layout
        n_heads = cfg.n_heads if which == 0 else cfg.n_kv_heads
        if layout.qkv is None:
            weight, bias = self._proj(layer, (layout.q, layout.k, layout.v)[which])
        else:
            weight, bias = self._split_fused(layer, layout.qkv, which)
        weight = weight.reshape(cfg.d_model, n_heads, cfg.d_head).permute(1, 0, 2)
        bias = bias.reshape(n_heads, cfg.d_head)
        if which and self.expand_kv and n_heads != cfg.n_heads:
            groups = cfg.n_heads // n_heads
            weight = weight.repeat_interleave(groups, dim=0)
            bias = bias.repeat_interleave(groups, dim=0)
        if self.fold_norm and layout.ln1 is not None:
            weight, bias = self._fold(layer, layout.ln1, weight, bias)
        return weight, bias

    def _split_fused(self, layer: int, fused: FusedQKV, which: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self._cfg
        module = self._module(layer, fused.path)
        weight = _in_out(module, fused.conv1d)
        bias = _bias(module, weight.shape[1], weight)
        if fused.layout == "per_head":
            weight = weight.reshape(cfg.d_model, cfg.n_heads, 3, cfg.d_head)[:, :, which]
            return weight.reshape(cfg.d_model, -1), bias.reshape(cfg.n_heads, 3, cfg.d_head)[:, which].reshape(-1)
        q_width, kv_width = cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
        start = (0, q_width, q_width + kv_width)[which]
        width = q_width if which == 0 else kv_width
        return weight[:, start : start + width], bias[start : start + width]

    def _fold(self, layer: int | None, norm_path: str, weight: torch.Tensor, bias: torch.Tensor):
        """Fold a norm's scale into ``weight`` `[..., d_model, out]` and its bias into ``bias``."""
        norm = self._module(layer, norm_path)
        scale = norm_weight(norm, self._model.adapter.norm)
        shift = norm_bias(norm)
        if shift is not None:
            bias = bias + torch.einsum("d,...do->...o", shift.to(weight.dtype), weight)
        if scale is not None:
            weight = weight * scale.to(weight.dtype)[:, None]
        return weight, bias

    def _mlp_in(self, layer: int, gate: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        layout, cfg = self._layout, self._cfg
        if layout.mlp_gate_up is not None:
            weight, bias = self._proj(layer, layout.mlp_gate_up)
            part = slice(0, cfg.d_mlp) if gate else slice(cfg.d_mlp, 2 * cfg.d_mlp)
            weight, bias = weight[:, part], bias[part]
        else:
            proj = layout.mlp_gate if gate else layout.mlp_in
            if proj is None:
                return None
            weight, bias = self._proj(layer, proj)
        if self.fold_norm:
            norm = layout.ln2 if layout.ln2 is not None else layout.ln1
            if norm is not None:
                weight, bias = self._fold(layer, norm, weight, bias)
        return weight, bias

    def _per_layer(self, get: Callable[[int], torch.Tensor]) -> LayerWeights:
        return LayerWeights(self._cfg.n_layers, get)

    # ------------------------------------------------------------ attention
    @property
    def W_Q(self) -> LayerWeights:
        return self._per_layer(lambda l: self._qkv(l, 0)[0])

    @property
    def W_K(self) -> LayerWeights:
        return self._per_layer(lambda l: self._qkv(l, 1)[0])

    @property
    def W_V(self) -> LayerWeights:
        return self._per_layer(lambda l: self._qkv(l, 2)[0])

    @property
    def b_Q(self) -> LayerWeights:
        return self._per_layer(lambda l: self._qkv(l, 0)[1])

    @property
    def b_K(self) -> LayerWeights:
        return self._per_layer(lambda l: self._qkv(l, 1)[1])

    @property
    def b_V(self) -> LayerWeights:
        return self._per_layer(lambda l: self._qkv(l, 2)[1])

    @property
    def W_O(self) -> LayerWeights:
        cfg = self._cfg
        return self._per_layer(
            lambda l: self._proj(l, self._layout.o)[0].reshape(cfg.n_heads, cfg.d_head, cfg.d_model)
        )

    @property
    def b_O(self) -> LayerWeights:
        return self._per_layer(lambda l: self._proj(l, self._layout.o)[1])

    # ------------------------------------------------------------ MLP
    @property
    def W_in(self) -> LayerWeights:
        return self._per_layer(lambda l: self._mlp_in(l, gate=False)[0])

    @property
    def b_in(self) -> LayerWeights:
        return self._per_layer(lambda l: self._mlp_in(l, gate=False)[1])

    @property
    def W_gate(self) -> LayerWeights | None:
        if not self._cfg.gated_mlp:
            return None
        return self._per_layer(lambda l: self._mlp_in(l, gate=True)[0])

    @property
    def b_gate(self) -> LayerWeights | None:
        if not self._cfg.gated_mlp:
            return None
        return self._per_layer(lambda l: self._mlp_in(l, gate=True)[1])

    @property
    def W_out(self) -> LayerWeights:
        return self._per_layer(lambda l: self._proj(l, self._layout.mlp_out)[0])

    @property
    def b_out(self) -> LayerWeights:
        return self._per_layer(lambda l: self._proj(l, self._layout.mlp_out)[1])

    # ------------------------------------------------------------ embeddings
    @property
    def W_E(self) -> torch.Tensor:
        """`[d_vocab, d_model]`, as stored (models that scale embeddings do it after the lookup)."""
        return self._module(None, self._layout.embed).weight

    @property
    def W_pos(self) -> torch.Tensor | None:
        if self._layout.pos_embed is None:
            return None
        return self._module(None, self._layout.pos_embed).weight

    @property
    def W_U(self) -> torch.Tensor:
        weight, _ = self._unembed()
        return weight

    @property
    def b_U(self) -> torch.Tensor:
        _, bias = self._unembed()
        return bias

    def _unembed(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = self._proj(None, Proj(self._layout.unembed))  # type: ignore[arg-type]
        if self.fold_norm:
            weight, bias = self._fold(None, self._layout.ln_final, weight, bias)
        return weight, bias
