"""Canonical activation names: which exist for a model, in what order, with what layout."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import ArgumentTypeError, UnknownActivationError
from .adapters.base import Adapter, Site
from .config import ModelConfig

# Per-head copies of the residual each query / key / value head reads (before ln1), and the residual
# the MLP reads (before ln2), as separate points: the destinations of circuit-graph edges.
SPLIT_SUFFIXES = ("attn.q_input", "attn.k_input", "attn.v_input")
ATTENTION_SUFFIXES = ("attn.q", "attn.k", "attn.v", "attn.scores", "attn.pattern", "attn.z")
# Suffixes whose computation needs the explicit attention path (not the fused kernel).
_EXPLICIT_ATTENTION = ("attn.scores", "attn.pattern")

BLOCK_ORDER = (
    "resid_pre",
    "ln1.out",
    *SPLIT_SUFFIXES,
    *ATTENTION_SUFFIXES,
    "attn.head_out",
    "attn.out",
    "resid_mid",
    "mlp.in",
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
    "attn.q_input": "bphd",
    "attn.k_input": "bphd",
    "attn.v_input": "bphd",
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
    """One named activation of one model, with the facts methods need about it.

    layout: the axes (``"bpd"``: [batch, pos, d]; ``"bphd"``: [batch, pos, head, d];
      ``"bhqk"``: [batch, head, query_pos, key_pos]).
    site: where the adapter finds it in the HF module tree; None for a point an extension
      added (see `mechscope.models.extension`), computed inside ``source``'s hook.
    width: size of the feature axis (d_model, d_mlp, d_head, d_vocab, an SAE's d_sae); None
      for scores/patterns, whose last axis is the key position.
    n_heads: size of the head axis (GQA aware: the KV head count for ``attn.k``/``attn.v``),
      None without one.
    explicit_attention: reading or writing it switches its layer from the model's fused
      attention kernel to the explicit path (``attn.scores``, ``attn.pattern``).
    """

    name: str
    layer: int | None
    suffix: str
    site: Site | None
    module_path: str  # absolute path of the module the site hooks ("" for logits/attention/extensions)
    layout: str
    width: int | None = None
    n_heads: int | None = None
    explicit_attention: bool = False
    source: str | None = None  # extension points: the name they are computed from

    @property
    def copies_residual(self) -> bool:
        """A per-reader copy of a residual (``attn.q_input``/``k_input``/``v_input``, ``mlp.in``):
        its value equals a residual point unless a hook changes it, so a cache of "every name"
        (``run_with_cache(names=None)``) leaves it out; name it (or a glob) to cache it."""
        return self.site is not None and self.site.kind in ("split_input", "input_copy", "renorm_input")

    @property
    def pos_dim(self) -> int:
        """The position axis (the query axis of scores/patterns)."""
        return self.layout.index("q") if "q" in self.layout else self.layout.index("p")

    @property
    def head_dim(self) -> int | None:
        return self.layout.index("h") if "h" in self.layout else None


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _facts(suffix: str, cfg: ModelConfig) -> dict:
    """width / n_heads / explicit_attention of a canonical suffix on a model."""
    if suffix in _EXPLICIT_ATTENTION:
        return {"n_heads": cfg.n_heads, "explicit_attention": True}
    if suffix == "attn.q_input":
        return {"width": cfg.d_model, "n_heads": cfg.n_heads}
    if suffix in ("attn.k_input", "attn.v_input"):
        return {"width": cfg.d_model, "n_heads": cfg.n_kv_heads}
    if suffix in ("attn.k", "attn.v"):
        return {"width": cfg.d_head, "n_heads": cfg.n_kv_heads}
    if suffix in ("attn.q", "attn.z"):
        return {"width": cfg.d_head, "n_heads": cfg.n_heads}
    if suffix == "attn.head_out":
        return {"width": cfg.d_model, "n_heads": cfg.n_heads}
    if suffix in ("mlp.pre", "mlp.post"):
        return {"width": cfg.d_mlp}
    if suffix == "logits":
        return {"width": cfg.d_vocab}
    return {"width": cfg.d_model}


def build_hook_points(adapter: Adapter, cfg: ModelConfig) -> list[HookPoint]:
    """All hook points of a model, in execution order."""
    points: list[HookPoint] = []

    def add(name: str, layer: int | None, suffix: str, site: Site, module_path: str) -> None:
        points.append(HookPoint(name, layer, suffix, site, module_path, LAYOUTS.get(suffix, "bpd"),
                                **_facts(suffix, cfg)))

    for suffix in GLOBAL_BEFORE:
        if suffix in adapter.global_sites:
            site = adapter.global_sites[suffix]
            add(suffix, None, suffix, site, site.path)
    for layer in range(cfg.n_layers):
        block = f"{adapter.layers}.{layer}"
        for suffix in BLOCK_ORDER:
            if suffix in ATTENTION_SUFFIXES:
                site = Site("attention", adapter.attention)
            elif suffix == "attn.head_out":
                site = Site("head_out", adapter.block_sites["attn.out"].path)
            elif suffix in adapter.block_sites and not (cfg.parallel_attn_mlp and suffix == "resid_mid"):
                site = adapter.block_sites[suffix]
            else:
                continue
            add(f"blocks.{layer}.{suffix}", layer, suffix, site, _join(block, site.path))
    for suffix in GLOBAL_AFTER:
        if suffix == "logits":
            add("logits", None, "logits", Site("output", ""), "")
        elif suffix in adapter.global_sites:
            site = adapter.global_sites[suffix]
            add(suffix, None, suffix, site, site.path)
    return points


NameSpec = str | Iterable[str] | Callable[[str], bool] | None


def select_names(spec: NameSpec, names: list[str]) -> list[str]:
    """Resolve a name spec (exact name, glob, list of those, predicate, or None for all).

    Returns the matching names in execution order. A name or glob that matches nothing
    raises `UnknownActivationError` with the closest valid names; anything else than these
    kinds of spec (an int, an ``at(...)`` target, a list holding non-strings) raises
    `ArgumentTypeError`.
    """
    if spec is None:
        return list(names)
    if callable(spec) and not isinstance(spec, str):
        return [n for n in names if spec(n)]
    if isinstance(spec, str):
        patterns = [spec]
    elif isinstance(spec, Iterable):
        patterns = list(spec)
    else:
        raise ArgumentTypeError(f"activation names must be a name or glob (str), a list of those, a predicate "
                                f"fn(name) -> bool, or None for all; got {type(spec).__name__} {spec!r}")
    chosen: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ArgumentTypeError(f"activation names must be strings, got {type(pattern).__name__} {pattern!r}")
        matched = fnmatch.filter(names, pattern) if any(c in pattern for c in "*?[") else (
            [pattern] if pattern in names else []
        )
        if not matched:
            raise UnknownActivationError(pattern, names)
        chosen.update(matched)
    return [n for n in names if n in chosen]
