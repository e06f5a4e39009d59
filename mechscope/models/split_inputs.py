"""Split inputs: the residual stream each attention head and each MLP reads, as hook points.

Circuit graphs need an edge's destination to be one reader of the residual stream: one
query head, one key/value head, one MLP. The model itself computes every head's q, k and v
from one shared normalised residual, so those readers have no activation of their own. These
points give them one:

- ``blocks.{l}.attn.q_input`` `[batch, pos, n_heads, d_model]`: the residual query head ``h``
  reads, before the attention's pre-norm (ln1). By default every head reads ``resid_pre``.
- ``blocks.{l}.attn.k_input`` / ``attn.v_input`` `[batch, pos, n_kv_heads, d_model]`: the same
  per key/value head. Under grouped-query attention a KV head's key and value are computed once
  and shared by its group of query heads, so the input belongs to the KV head: giving each query
  head its own key input would duplicate the KV projection, which is a different model.
- ``blocks.{l}.mlp.in`` `[batch, pos, d_model]`: the residual the MLP reads, before its
  pre-norm (``resid_mid`` in sequential blocks, ``resid_pre`` in parallel ones). Unlike
  ``resid_mid`` (written in place), changing it changes what the MLP reads and nothing else.

When a hook replaces head ``h``'s input by ``x_h``, that head's projection is computed as the
model computes it, from ``pre_norm(x_h)`` through its own rows of the projection (bias
included); everything after it (per-head q/k norms, rotary, attention) runs as usual. This
is done by a forward hook on the projection module (q_proj/k_proj/v_proj or the fused qkv),
installed only while a split point of that layer is hooked or cached: it applies the pre-norm
module to the per-head inputs `[b, p, h, d_model]` (norms act on the last axis), projects each
head with its own weight slice in one einsum (the cost of one projection) and writes the
result into the module's output layout. Gradients at a split point flow only through that
head's projection. When the points are read but left unchanged (no hook edited them, no
gradient asked for), the model's own projection output is kept, so caching them is exact.

Caveats:
- While a layer's split inputs are changed or differentiated, its projections read them through
  the pre-norm and no longer read ``ln1.out`` (likewise GPT-J's MLP, which shares ln_1, reads
  ``ln_1(mlp.in)``): an edit of ``ln1.out`` in the same forward does not reach them.
- OLMo 2 normalises q and k with one RMS norm over all heads (``cfg.qk_norm == "full"``): a
  head's projection is still computed from its own input, but the norm is then applied to the
  assembled projections of all heads, so changing one head's input also rescales the other
  heads' q (k). ``cfg.qk_norm == "per_head"`` (Qwen3, Gemma 3) keeps heads independent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .adapters.base import FusedQKV, NormSpec
from .norms import norm_vjp, norm_weight
from .weights import Weights

if TYPE_CHECKING:
    from .config import ModelConfig
    from .hooked import HookedModel

# The split point suffixes and which projection (0 q, 1 k, 2 v) each recomputes.
PART_OF = {"attn.q_input": 0, "attn.k_input": 1, "attn.v_input": 2}


def expanded(resid: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``resid`` `[b, p, d]` copied to every head: `[b, p, n_heads, d]` (a fresh tensor, so a hook
    can edit it in place)."""
    return resid.unsqueeze(-2).expand(*resid.shape[:-1], n_heads, resid.shape[-1]).clone()


def unchanged(new: torch.Tensor, resid: torch.Tensor) -> bool:
    """Whether ``new`` (`[b, p, d]` or per head `[b, p, h, d]`) still equals ``resid`` `[b, p, d]`."""
    reference = resid if new.ndim == resid.ndim else resid.unsqueeze(-2).expand_as(new)
    return torch.equal(new, reference)


def project_heads(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Each head's projection of its own input: ``inputs`` `[b, p, h, d_model]` (normalised),
    ``weight`` `[h, d_model, d_head]`, ``bias`` `[h, d_head]` -> `[b, p, h, d_head]`."""
    out = torch.einsum("bphd,hde->bphe", inputs, weight.to(inputs.dtype))
    return out + bias.to(out.dtype)


def assemble(output: torch.Tensor, fused: FusedQKV | None, parts: dict[int, torch.Tensor],
             cfg: ModelConfig) -> torch.Tensor:
    """The projection module's output `[b, p, out]` with the recomputed parts written in.

    ``parts``: 0/1/2 (q/k/v) -> `[b, p, heads, d_head]`. ``fused`` None: one separate
    projection (exactly one part); "concat": `[q | k | v]` along the features; "per_head":
    features `[n_heads, 3, d_head]` (GPT-NeoX).
    """
    lead = output.shape[:-1]
    if fused is None:
        (part,) = parts.values()
        return part.reshape(*lead, -1).to(output.dtype)
    if fused.layout == "per_head":
        pieces = list(output.reshape(*lead, cfg.n_heads, 3, cfg.d_head).unbind(-2))
        for which, part in parts.items():
            pieces[which] = part.to(output.dtype)
        return torch.stack(pieces, dim=-2).reshape(output.shape)
    q_width, kv_width = cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
    pieces = list(output.split([q_width, kv_width, kv_width], dim=-1))
    for which, part in parts.items():
        pieces[which] = part.reshape(*lead, -1).to(output.dtype)
    return torch.cat(pieces, dim=-1)


class HeadsReadResidual(torch.autograd.Function):
    """Gradients for split inputs left unchanged (every head reads the residual).

    Forward: the model's own projection output for the part (detached from its path through
    ``ln1.out``, so that path gets no gradient from it). Backward: each head's gradient through its
    own weight slice and the pre-norm's Jacobian at the residual (`norms.norm_vjp`, in closed form
    for all heads at once), instead of the per-head forward a changed input needs.
    """

    @staticmethod
    def forward(ctx, heads: torch.Tensor, own: torch.Tensor, resid: torch.Tensor, weight: torch.Tensor,
                norm: nn.Module | None, spec: NormSpec) -> torch.Tensor:
        """heads `[b, p, h, d_model]` (their values equal ``resid``), own `[b, p, h, d_head]`,
        resid `[b, p, d_model]`, weight `[h, d_model, d_head]`."""
        ctx.save_for_backward(resid, weight)
        ctx.norm, ctx.spec = norm, spec
        return own.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        resid, weight = ctx.saved_tensors
        scale = None if ctx.norm is None else norm_weight(ctx.norm, ctx.spec)
        if scale is not None:  # the norm's scale folded into the weight: one pass less on [b, p, h, d]
            weight = weight * scale.to(weight.dtype)[:, None]
        upstream = torch.einsum("bphe,hde->bphd", grad, weight.to(grad.dtype))  # d/d normed input, per head
        if ctx.norm is not None:
            upstream = norm_vjp(ctx.norm, ctx.spec, resid, upstream, weight_applied=True)
        return upstream, None, None, None, None, None


def own_part(output: torch.Tensor, fused: FusedQKV | None, which: int, n_heads: int, cfg: ModelConfig) -> torch.Tensor:
    """The model's own projection output for q (0), k (1) or v (2): `[b, p, n_heads, d_head]`."""
    lead = output.shape[:-1]
    if fused is None:
        return output.reshape(*lead, n_heads, cfg.d_head)
    if fused.layout == "per_head":
        return output.reshape(*lead, cfg.n_heads, 3, cfg.d_head)[..., which, :]
    q_width, kv_width = cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
    return output.split([q_width, kv_width, kv_width], dim=-1)[which].reshape(*lead, n_heads, cfg.d_head)


def plain_norm(module: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """``module``'s own computation on ``x`` without firing its hooks (the identity without a norm)."""
    return x if module is None else module.forward(x)


def qk_norm_kind(hf: nn.Module, layers: str, components, cfg: ModelConfig) -> str | None:
    """``"per_head"`` when the family normalises q/k over ``d_head`` (Qwen3, Gemma 3), ``"full"``
    when one norm spans all heads (OLMo 2: its weight is ``n_heads * d_head`` wide), None without
    q/k norms. Read from the norm module of block 0."""
    if components.q_norm is None:
        return None
    norm = hf.get_submodule(f"{layers}.0.{components.q_norm}")
    weight = getattr(norm, "weight", None)
    width = weight.numel() if isinstance(weight, torch.Tensor) else None
    return "full" if width == cfg.n_heads * cfg.d_head and cfg.n_heads > 1 else "per_head"


def head_projection(model: HookedModel, layer: int, which: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight `[heads, d_model, d_head]` and bias `[heads, d_head]` of q (0), k (1) or v (2) of
    ``layer``: views of the live parameters (KV heads not expanded)."""
    return Weights(model)._qkv(layer, which)
