"""The component graph of a model: sources (writers to the residual stream), destinations
(readers of it) and the real edges between them, as dense tables in hannamw/EAP-IG's layout.

Sources, in execution order (EAP-IG's *forward* index): ``input`` (``blocks.0.resid_pre``:
token embedding, plus position embedding where the model has one), then per layer ``l`` the
heads ``a{l}.h{h}`` (their ``attn.head_out`` shares) and the MLP ``m{l}`` (``mlp.out``).
Destinations (EAP-IG's *backward* index): per layer the q inputs of every query head
``a{l}.h{h}<q>``, the k inputs, the v inputs, the MLP input ``m{l}``; last ``logits`` (the last
``resid_post``, read by the final norm).

GQA: k and v inputs are per *KV head* (``a{l}.kv{g}<k>``; named ``a{l}.h{g}<k>`` when every
query head has its own KV head, which is EAP-IG's naming exactly). A KV head computes one key
and one value from one input for all query heads of its group, so an edge into "the key of
query head h" has no counterpart in the model: the query heads of a group share it. Expanding
the key per query head (what TransformerLens-based tools do) multiplies that part of the graph
and of the memory by the group size; `export` expands to EAP-IG's per-query-head layout when
a file must be read by MIB tooling.

A source writes before a destination reads exactly when its forward index is below the
destination's *prefix*: heads of layer ``l`` read sources ``[0, 1 + l(H+1))``; MLP ``l`` also
reads layer ``l``'s heads in sequential blocks (prefix ``1 + l(H+1) + H``), not in parallel
ones (GPT-J, parallel GPT-NeoX); the logits read every source.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ..errors import SelectionError

LEVELS = ("edge", "node")


@dataclass(frozen=True)
class Source:
    """A writer to the residual stream: its graph name, hook name and head (None: whole tensor)."""

    name: str
    layer: int  # -1 for the input
    hook: str
    head: int | None = None


@dataclass(frozen=True)
class Destination:
    """A reader of the residual stream: name, hook name, head (query or KV head; None: whole
    tensor), ``qkv`` letter for attention inputs, and ``prefix``: sources ``[0, prefix)`` write
    before it reads."""

    name: str
    node: str
    layer: int  # n_layers for the logits
    hook: str
    prefix: int
    head: int | None = None
    qkv: str | None = None


@dataclass(frozen=True)
class Graph:
    """Name tables and real-edge mask of a model's component graph (see the module docstring).

    cfg: ``n_layers``, ``n_heads``, ``n_kv_heads``, ``parallel_attn_mlp``, ``d_model``.
    level: "edge" (scores per edge) or "node" (scores per source node).
    """

    cfg: dict
    level: str = "edge"

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise SelectionError(f"level must be one of {LEVELS}, got {self.level!r}")
        missing = {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"} - set(self.cfg)
        if missing:
            raise SelectionError(f"a graph config needs {sorted(missing)}")

    @classmethod
    def from_model(cls, model, level: str = "edge") -> Graph:
        """The graph of a `HookedModel` (any family; GQA native, parallel blocks read from cfg)."""
        c = model.cfg
        return cls({"n_layers": c.n_layers, "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads,
                    "parallel_attn_mlp": bool(c.parallel_attn_mlp), "d_model": c.d_model}, level)

    # -- sizes ------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.cfg["n_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.cfg["n_heads"])

    @property
    def n_kv_heads(self) -> int:
        return int(self.cfg.get("n_kv_heads") or self.cfg["n_heads"])

    @property
    def n_src(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_dst(self) -> int:
        return self.n_layers * (self.n_heads + 2 * self.n_kv_heads + 1) + 1

    @property
    def n_edges(self) -> int:
        """The number of real edges."""
        return int(sum(d.prefix for d in self.destinations))

    # -- tables -------------------------------------------------------------------------------
    def src_index(self, layer: int, head: int | None = None) -> int:
        """Forward index of head ``head`` of ``layer`` (or of its MLP with ``head=None``); ``layer=-1``: input."""
        if layer < 0:
            return 0
        return 1 + layer * (self.n_heads + 1) + (self.n_heads if head is None else head)

    @cached_property
    def sources(self) -> list[Source]:
        out = [Source("input", -1, "blocks.0.resid_pre")]
        for l in range(self.n_layers):
            out += [Source(f"a{l}.h{h}", l, f"blocks.{l}.attn.head_out", h) for h in range(self.n_heads)]
            out.append(Source(f"m{l}", l, f"blocks.{l}.mlp.out"))
        return out

    def kv_label(self, group: int) -> str:
        return f"h{group}" if self.n_kv_heads == self.n_heads else f"kv{group}"

    @cached_property
    def destinations(self) -> list[Destination]:
        H, G = self.n_heads, self.n_kv_heads
        out = []
        for l in range(self.n_layers):
            heads_prefix = 1 + l * (H + 1)
            for qkv, count in (("q", H), ("k", G), ("v", G)):
                for h in range(count):
                    node = f"a{l}.h{h}" if qkv == "q" else f"a{l}.{self.kv_label(h)}"
                    out.append(Destination(f"{node}<{qkv}>", node, l, f"blocks.{l}.attn.{qkv}_input",
                                           heads_prefix, h, qkv))
            mlp_prefix = heads_prefix + (0 if self.cfg["parallel_attn_mlp"] else H)
            out.append(Destination(f"m{l}", f"m{l}", l, f"blocks.{l}.mlp.in", mlp_prefix))
        out.append(Destination("logits", "logits", self.n_layers, f"blocks.{self.n_layers - 1}.resid_post", self.n_src))
        return out

    @cached_property
    def src_names(self) -> list[str]:
        return [s.name for s in self.sources]

    @cached_property
    def dst_names(self) -> list[str]:
        return [d.name for d in self.destinations]

    @cached_property
    def prefix(self) -> torch.Tensor:
        """`[n_dst]`: destination ``j`` reads sources ``[0, prefix[j])``."""
        return torch.tensor([d.prefix for d in self.destinations])

    @cached_property
    def real(self) -> torch.Tensor:
        """`[n_src, n_dst]` bool: the edges that exist."""
        return torch.arange(self.n_src)[:, None] < self.prefix[None, :]

    @cached_property
    def owner(self) -> torch.Tensor:
        """`[n_src, n_dst]` bool: source node ``i`` is the node destination ``j`` is an input of
        (EAP-IG's ``forward_to_backward``; a KV destination belongs to every head of its group)."""
        out = torch.zeros(self.n_src, self.n_dst, dtype=torch.bool)
        group = self.n_heads // self.n_kv_heads
        for j, d in enumerate(self.destinations):
            if d.node == "logits":
                continue
            if d.head is None:
                out[self.src_index(d.layer), j] = True
            elif d.qkv == "q":
                out[self.src_index(d.layer, d.head), j] = True
            else:
                for h in range(d.head * group, (d.head + 1) * group):
                    out[self.src_index(d.layer, h), j] = True
        return out

    def edge_name(self, src: int, dst: int) -> str:
        """``"a0.h1->m2"``, ``"input->a1.h0<q>"``: EAP-IG's edge naming."""
        return f"{self.src_names[src]}->{self.dst_names[dst]}"

    def hook_groups(self) -> dict[str, list[int]]:
        """Destination hook name -> the destination indices it holds (in head order)."""
        groups: dict[str, list[int]] = {}
        for j, d in enumerate(self.destinations):
            groups.setdefault(d.hook, []).append(j)
        return groups

    def source_groups(self) -> dict[str, list[int]]:
        """Source hook name -> the source indices it holds (in head order)."""
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(self.sources):
            groups.setdefault(s.hook, []).append(i)
        return groups

    def empty_scores(self) -> torch.Tensor:
        """Zero scores: `[n_src, n_dst]` (edge level) or `[n_src]` (node level)."""
        return torch.zeros(self.n_src, self.n_dst) if self.level == "edge" else torch.zeros(self.n_src)
