"""Canonical activation names: which exist for a model, in what order, with what layout."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import UnknownActivationError
from .adapters.base import Adapter, Site

ATTENTION_SUFFIXES = ("attn.q", "attn.k", "attn.v", "attn.scores", "attn.pattern", "attn.z")
# Suffixes whose computation needs the explicit attention path (not the fused kernel).
PATTERN_SUFFIXES = ("attn.scores", "attn.pattern")

BLOCK_ORDER = (
    "resid_pre",
    "ln1.out",
    *ATTENTION_SUFFIXES,
    "attn.head_out",
    "attn.out",
    "resid_mid",
    "ln2.out",
    "mlp.pre",
    "mlp.post",
    "mlp.out",
    "resid_post",
)
GLOBAL_BEFORE = ("embed", "pos_embed")
GLOBAL_AFTER = ("ln_final.out", "logits")

# Layout letters: b batch, p position, h head, d feature, q query position, k key position.
LAYOUTS = {
    "attn.q": "bphd",
    "attn.k": "bphd",
    "attn.v": "bphd",
    "attn.z": "bphd",
    "attn.head_out": "bphd",
    "attn.scores": "bhqk",
    "attn.pattern": "bhqk",
}


@dataclass(frozen=True)
class HookPoint:
    """One named activation of one model.

    ``layout`` names the axes (``"bpd"``: [batch, pos, d]; ``"bphd"``: [batch, pos, head, d];
    ``"bhqk"``: [batch, head, query_pos, key_pos]).
    """

    name: str
    layer: int | None
    suffix: str
    site: Site
    module_path: str  # absolute path of the module the site hooks ("" for logits/attention)
    layout: str

    @property
    def pos_dim(self) -> int:
        return self.layout.index("q") if "q" in self.layout else self.layout.index("p")

    @property
    def head_dim(self) -> int | None:
        return self.layout.index("h") if "h" in self.layout else None


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def build_hook_points(adapter: Adapter, n_layers: int, parallel: bool) -> list[HookPoint]:
    """All hook points of a model, in execution order."""
    points: list[HookPoint] = []
    for suffix in GLOBAL_BEFORE:
        if suffix in adapter.global_sites:
            site = adapter.global_sites[suffix]
            points.append(HookPoint(suffix, None, suffix, site, site.path, "bpd"))
    for layer in range(n_layers):
        block = f"{adapter.layers}.{layer}"
        for suffix in BLOCK_ORDER:
            if suffix in ATTENTION_SUFFIXES:
                site = Site("attention", adapter.attention)
            elif suffix == "attn.head_out":
                site = Site("head_out", adapter.block_sites["attn.out"].path)
            elif suffix in adapter.block_sites and not (parallel and suffix == "resid_mid"):
                site = adapter.block_sites[suffix]
            else:
                continue
            layout = LAYOUTS.get(suffix, "bpd")
            points.append(
                HookPoint(f"blocks.{layer}.{suffix}", layer, suffix, site, _join(block, site.path), layout)
            )
    for suffix in GLOBAL_AFTER:
        if suffix == "logits":
            points.append(HookPoint("logits", None, "logits", Site("output", ""), "", "bpd"))
        elif suffix in adapter.global_sites:
            site = adapter.global_sites[suffix]
            points.append(HookPoint(suffix, None, suffix, site, site.path, "bpd"))
    return points


NameSpec = str | Iterable[str] | Callable[[str], bool] | None


def select_names(spec: NameSpec, names: list[str]) -> list[str]:
    """Resolve a name spec (exact name, glob, list of those, predicate, or None for all).

    Returns the matching names in execution order. A name or glob that matches nothing
    raises `UnknownActivationError` with the closest valid names.
    """
    if spec is None:
        return list(names)
    if callable(spec) and not isinstance(spec, str):
        return [n for n in names if spec(n)]
    patterns = [spec] if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"activation names must be strings, got {type(pattern).__name__}")
        matched = fnmatch.filter(names, pattern) if any(c in pattern for c in "*?[") else (
            [pattern] if pattern in names else []
        )
        if not matched:
            raise UnknownActivationError(pattern, names)
        chosen.update(matched)
    return [n for n in names if n in chosen]
