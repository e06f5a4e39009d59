"""Routing a model's attention through mechscope.

For models that call attention through transformers' ``AttentionInterface``, mechscope
registers one attention function (and the matching mask function) under the name
``mechscope_<base>``, where ``<base>`` is the implementation the model was loaded with.
For a layer nobody asked about, that function calls the base implementation with the
very same arguments, so logits stay bit-identical. For an instrumented layer it fires
``attn.q/k/v/z`` and, only when scores or the pattern are wanted, computes attention
explicitly.

Models whose attention module bypasses the interface (GPT-J before transformers 5.24) are
reached by wrapping the module's own attention method instead. An adapter may declare both
entries (a family that moved between releases); `attention_entry_of` picks the one the
installed attention class provides.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import transformers
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    from .adapters.base import Adapter, AttentionEntry
    from .hooked import HookedModel
    from .runtime import HookRuntime

def explicit_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
    softcap: float | None,
    upcast: bool,
    on_scores: Callable[[torch.Tensor], torch.Tensor],
    on_pattern: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with a materialised pattern, as transformers' eager path computes it.

    ``query`` `[b, h, q, d]`, ``key``/``value`` `[b, kv_h, k, d]` (GQA groups expanded
    here), ``mask``: None (causal, as SDPA's ``is_causal``), boolean (True = attend) or
    additive float `[b or 1, 1, q, k']`. Returns ``(z [b, q, h, d], pattern [b, h, q, k])``.
    ``upcast`` computes scores in fp32 (GPT-J).
    """
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if upcast:
        scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling
    else:
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = on_scores(_apply_mask(module, scores, mask))
    pattern = on_pattern(torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype))
    z = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return z, pattern


def _apply_mask(module: nn.Module, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    q_len, k_len = scores.shape[-2:]
    lowest = torch.finfo(scores.dtype).min
    if mask is None:
        if q_len == 1 or not getattr(module, "is_causal", True):
            return scores
        # SDPA's is_causal aligns the causal mask to the upper left.
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril()
        return scores.masked_fill(~allowed, lowest)
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask[..., :k_len], lowest)
    return scores + mask[..., :k_len].to(scores.dtype)


def _eager_of(module: nn.Module) -> Callable:
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise UnsupportedArchitectureError(
            f"{type(module).__name__} has no eager_attention_forward; load it with attn_implementation='sdpa'"
        )
    return fn


def _base_function(base_name: str, module: nn.Module) -> Callable:
    return _eager_of(module) if base_name == "eager" else ALL_ATTENTION_FUNCTIONS[base_name]


def _routed(base_name: str) -> Callable:
    """The function registered in transformers' AttentionInterface for one base implementation."""

    def routed_attention(module, query, key, value, attention_mask, **kwargs):
        route = module.__dict__.get("_mechscope_route")
        if route is None:  # a model sharing its config object with a wrapped one
            return _base_function(base_name, module)(module, query, key, value, attention_mask, **kwargs)
        runtime_ref, layer, base, extra, instrumented_base = route
        runtime = runtime_ref()
        if runtime is None or not runtime.attention_active(layer):
            return base(module, query, key, value, attention_mask, **kwargs)
        if extra:
            kwargs = {**kwargs, **extra}
        return runtime.run_attention(layer, instrumented_base, module, query, key, value, attention_mask, kwargs)

    return routed_attention


def _without(base: Callable, extra: dict) -> Callable:
    """``base`` called without mechscope's own keyword arguments ``extra``."""
    if not extra:
        return base

    def call(module, query, key, value, attention_mask, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in extra}
        return base(module, query, key, value, attention_mask, **kwargs)

    return call


def _explicit_kwargs(adapter: Adapter) -> dict:
    """What the explicit path must know beyond the model's own attention arguments."""
    return {"_mechscope_upcast": True} if adapter.attention_upcast else {}


# Routed implementation names. They must not contain "sdpa", "flash" or "flex_attention":
# transformers' validation and loading paths key on those substrings.
_ROUTES = {"sdpa": "mechscope_fused", "eager": "mechscope_eager"}
_BASE_OF = {route: base for base, route in _ROUTES.items()}


def _route_name(current: str) -> str:
    """Register the routed attention for the model's implementation; return its name."""
    if current in _BASE_OF:
        return current
    if current not in _ROUTES:
        raise UnsupportedArchitectureError(
            f"mechscope routes attention through 'sdpa' or 'eager', but the model was loaded with "
            f"attn_implementation={current!r}; load it with attn_implementation='sdpa'"
        )
    name = _ROUTES[current]
    if name not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(name, _routed(current))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    return name


def _method_wrapper(module: nn.Module, original: Callable, runtime_ref, layer: int, scale_attr: str, extra: dict):
    """Wrap an attention module's own ``_attn(query, key, value, attention_mask)`` method."""

    def wrapped(query, key, value, attention_mask=None, *args, **kwargs):
        runtime = runtime_ref()
        if runtime is None or not runtime.attention_active(layer):
            return original(query, key, value, attention_mask, *args, **kwargs)

        def base(module, q, k, v, mask, **_):
            out, weights = original(q, k, v, mask, *args, **kwargs)
            return out.transpose(1, 2), weights

        scaling = 1.0 / float(getattr(module, scale_attr))
        z, weights = runtime.run_attention(
            layer, base, module, query, key, value, attention_mask,
            {"scaling": scaling, **extra},
        )
        return z.transpose(1, 2), weights

    return wrapped


def _uses_interface(cls: type) -> bool:
    """Whether ``cls`` calls attention through transformers' ``ALL_ATTENTION_FUNCTIONS``: the
    module defining its ``forward`` imports it (every interface family does: it looks the
    implementation up there at each call; forwards are often decorated, so their code is not read)."""
    owner = next((c for c in cls.__mro__ if "forward" in vars(c)), cls)
    namespace = vars(sys.modules[owner.__module__])
    return any(value is ALL_ATTENTION_FUNCTIONS for value in namespace.values())


def attention_entry_of(adapter: Adapter, module: nn.Module) -> AttentionEntry:
    """The first of ``adapter``'s declared attention entries that ``module``'s class provides:
    ``"interface"`` if it calls ``ALL_ATTENTION_FUNCTIONS``, ``"method"`` if it has
    ``adapter.attention_method``."""
    cls = type(module)
    for entry in adapter.attention_entries:
        if entry == "interface" and _uses_interface(cls):
            return entry
        if entry == "method" and callable(getattr(cls, adapter.attention_method or "", None)):
            return entry
    wanted = " or ".join(
        "calls through transformers' ALL_ATTENTION_FUNCTIONS" if e == "interface"
        else f"has a {adapter.attention_method!r} method" for e in adapter.attention_entries
    )
    raise UnsupportedArchitectureError(
        f"mechscope's {'/'.join(adapter.model_types)} adapter expects an attention module that {wanted}, "
        f"but {cls.__module__}.{cls.__name__} of transformers {transformers.__version__} does not; "
        "this transformers release changed the family's attention (see docs/adapters.md, 'transformers versions')"
    )


def attach_attention(model: HookedModel, runtime: HookRuntime) -> None:
    """Route every layer's attention of ``model`` through ``runtime``."""
    adapter = model.adapter
    runtime_ref = weakref.ref(runtime)
    modules = [model.hf.get_submodule(f"{adapter.layers}.{i}.{adapter.attention}") for i in range(model.cfg.n_layers)]
    entry = attention_entry_of(adapter, modules[0])
    extra = _explicit_kwargs(adapter)
    if entry == "method":
        for layer, module in enumerate(modules):
            original = getattr(type(module), adapter.attention_method).__get__(module)
            setattr(module, adapter.attention_method,
                    _method_wrapper(module, original, runtime_ref, layer, adapter.attention_scale_attr, extra))
        return
    current = model.hf.config._attn_implementation or "eager"
    name = _route_name(current)
    base_name = _BASE_OF[name]
    for layer, module in enumerate(modules):
        base = _base_function(base_name, module)
        module._mechscope_route = (runtime_ref, layer, base, extra, _without(base, extra))
    if current != name:
        model.hf.set_attn_implementation(name)
