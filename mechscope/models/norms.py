"""Norms seen as linear maps with a frozen per-position scale.

Direct logit attribution and per-head outputs under sandwich norms split a normalised sum
into the contributions of its parts. Freezing the data-dependent scale (1/rms or 1/std,
computed on the whole input) makes the norm linear, so the parts sum to the full output.
"""

from __future__ import annotations

import torch
from torch import nn

from .adapters.base import NormSpec

_EPS_ATTRS = ("variance_epsilon", "eps", "epsilon", "layer_norm_eps")


def norm_eps(module: nn.Module) -> float:
    for attr in _EPS_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    raise AttributeError(f"cannot find the epsilon of norm module {type(module).__name__}")


def norm_weight(module: nn.Module, spec: NormSpec) -> torch.Tensor | None:
    """The effective elementwise scale `[d]` (with the Gemma ``1 + w`` offset), or None."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return None
    return weight + spec.weight_offset if spec.weight_offset else weight


def norm_bias(module: nn.Module) -> torch.Tensor | None:
    return getattr(module, "bias", None)


class FrozenNorm:
    """The norm ``module`` linearised at input ``x`` `[..., d]`.

    ``apply(part)`` maps a part of ``x`` (same trailing dim ``d``) to its share of the
    output; shares of parts that sum to ``x`` sum to ``norm(x) - bias``.
    """

    def __init__(self, module: nn.Module, spec: NormSpec, x: torch.Tensor):
        self.spec = spec
        xf = x.float()
        eps = norm_eps(module)
        if spec.kind == "rms":
            inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        else:
            inv = torch.rsqrt(xf.var(-1, keepdim=True, unbiased=False) + eps)
        weight = norm_weight(module, spec)
        self.scale = inv if weight is None else inv * weight.float()  # [..., d]
        self.bias = norm_bias(module)
        self.dtype = x.dtype

    def apply(self, part: torch.Tensor, head_axis: bool = False) -> torch.Tensor:
        """Contribution of ``part`` to the output, in the input dtype.

        ``part``: `[..., d]` shaped like the norm input, or `[..., n, d]` with an extra
        axis of parts (heads) before ``d`` when ``head_axis`` is set.
        """
        part = part.float()
        if self.spec.kind == "layer":
            part = part - part.mean(-1, keepdim=True)
        scale = self.scale.unsqueeze(-2) if head_axis else self.scale
        return (part * scale).to(self.dtype)


def norm_vjp(module: nn.Module, spec: NormSpec, x: torch.Tensor, upstream: torch.Tensor, *,
             weight_applied: bool = False) -> torch.Tensor:
    """The gradient through the norm ``module`` at input ``x`` `[..., d]` of several upstream
    gradients at once: ``upstream`` `[..., n, d]` (n per-head gradients of the norm's output, all
    at the same input) -> `[..., n, d]`, i.e. ``J(x)^T u`` for each, in closed form (an RMS norm
    ``w * x / rms(x)``, a LayerNorm ``w * (x - mean) / std + b``; the Gemma ``1 + w``), computed in
    at least fp32. weight_applied: ``upstream`` is already multiplied by the norm's scale ``w``."""
    dtype = torch.promote_types(x.dtype, torch.float32)  # at least fp32, float64 stays
    xf = x.to(dtype)
    v = upstream.to(dtype)
    weight = None if weight_applied else norm_weight(module, spec)
    if weight is not None:
        v = v * weight.to(dtype)
    if spec.kind == "layer":
        xf = xf - xf.mean(-1, keepdim=True)
        v = v - v.mean(-1, keepdim=True)
    inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm_eps(module))  # 1 / rms or 1 / std, [..., 1]
    unit = xf * inv  # [..., d]
    dot = torch.einsum("...d,...nd->...n", unit, v) / x.shape[-1]  # [..., n]
    out = torch.addcmul(v, unit.unsqueeze(-2), dot.unsqueeze(-1), value=-1)
    return out.mul_(inv.unsqueeze(-2)).to(upstream.dtype)
