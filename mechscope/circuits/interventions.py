"""Edge interventions: a forward in which chosen edges carry ablated instead of current values.

The difference-buffer trick (one ablation pass, then one patched pass, whatever the circuit):
the ablated source outputs `[n, pos, n_src, d_model]` are recorded once (`ablated_sources`);
in the patched forward every source hook stores ``current - ablated`` for its sources, and every
destination hook rebuilds its input as

    input(v) - sum_u W[u, v] * (current(u) - ablated(u))

before the destination's own normalisation (the q/k/v inputs read the residual before ln1, the
MLP input before ln2, the logits before the final norm). ``W = 1 - mask`` `[k, n_src, n_dst]`:
1 where the edge is pruned, 0 where it is kept, anything in between for learned (continuous)
masks, which get gradients through it. ``k`` masks run at once as ``k`` variants stacked on
the batch axis (variant-major rows ``v * n + i``, as `PromptPairs.tile` lays them out): ACDC
evaluates many edge removals per forward, edge pruning trains one float mask, faithfulness
curves run their circuits side by side. W = 0 everywhere (the full circuit) leaves the forward
as it was; W = 1 on every real edge gives each destination the ablated input.

Small circuits: a destination group with few kept incoming edges computes the same sum as the
running total of every source's difference minus the kept edges' (the *kept form*, see
`EdgePatch._correction`), so its cost follows the circuit, not the graph.

Memory: only the sources some destination's sum reads are buffered, as `[k * n, pos, s, d_model]`
in one source-major buffer `[k, s, n, pos, d_model]` in ``buffer_dtype`` (bf16 halves it), so
each destination reads a prefix (or a gather) of it with one batched matmul; `buffer_bytes_per_token`
states the worst case. Prompts are chunked by the callers (``batch_size``) to bound it further.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import MechscopeError, SelectionError
from .graph import Graph
from .spans import Spans

ABLATIONS = ("corrupted", "zero", "mean")
KEPT_FORM_AT_MOST = 0.3  # a group takes the kept form when its kept sources are at most this share of its pruned
GATHER_AT_MOST = 0.6  # a group gathers its sources from the buffer when they are at most this share of it


def stack_sources(graph: Graph, cache) -> torch.Tensor:
    """The sources' outputs `[n, pos, n_src, d_model]` in forward order, from a cache holding
    every source hook (``blocks.0.resid_pre``, ``attn.head_out``, ``mlp.out``)."""
    parts = []
    for hook in graph.source_groups():
        x = cache[hook]
        parts.append(x if x.ndim == 4 else x[:, :, None])
    device = parts[0].device  # a device_map model's layers may sit on several devices
    return torch.cat([part.to(device) for part in parts], dim=2)


def source_names(graph: Graph) -> list[str]:
    return list(graph.source_groups())


def source_activations(model, graph: Graph, tokens: torch.Tensor, *, dtype: torch.dtype | None = None,
                       logits_at: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, sources [n, pos, n_src, d_model])`` of one plain forward of ``tokens``
    (logits at ``logits_at`` `[n, j]` only, when given)."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, source_names(graph), dtype=dtype, logits_at=logits_at)
    return logits, stack_sources(graph, cache)


def ablated_sources(model, graph: Graph, corrupted: torch.Tensor, ablation: str = "corrupted", *,
                    reference: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The values pruned edges carry: `[n, pos, n_src, d]` (``"corrupted"``: the corrupted run's
    outputs), `[1, pos, n_src, d]` (``"mean"``: their mean over the prompts at each position, of
    ``reference`` tokens when given) or `[1, 1, n_src, d]` zeros (``"zero"``)."""
    if ablation not in ABLATIONS:
        raise SelectionError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    if ablation == "zero":
        return torch.zeros(1, 1, graph.n_src, graph.cfg["d_model"], dtype=dtype or model.dtype, device=model.device)
    with torch.no_grad():  # the sources alone: the forward stops after the last block (no logits)
        _, cache = model.run_with_cache(corrupted if reference is None else reference, source_names(graph),
                                        dtype=dtype, stop_early=True)
    acts = stack_sources(graph, cache)
    return acts.mean(0, keepdim=True) if ablation == "mean" else acts


def buffer_bytes_per_token(graph: Graph, dtype: torch.dtype = torch.float32, *, with_ablated: bool = True) -> int:
    """Worst-case bytes per token of an edge-patched forward: the difference buffer
    (``n_src * d_model`` values) plus, with ``with_ablated``, the stored ablated outputs."""
    size = torch.empty((), dtype=dtype).element_size()
    return graph.n_src * int(graph.cfg["d_model"]) * size * (2 if with_ablated else 1)


def pruned_weights(graph: Graph, in_graph: torch.Tensor, *, spans: int | None = None) -> torch.Tensor:
    """W `[k, n_src, n_dst]` (float) from membership `[n_src, n_dst]` or `[k, n_src, n_dst]`
    (bool: True = kept; float: the kept fraction), zero off the real edges. Position-aware
    (``spans`` = the number of spans): `[k, n_spans, n_src, n_dst]` from `[n_spans, n_src, n_dst]`
    or `[k, n_spans, n_src, n_dst]`."""
    tail = (graph.n_src, graph.n_dst) if spans is None else (spans, graph.n_src, graph.n_dst)
    mask = in_graph if in_graph.ndim == len(tail) + 1 else in_graph[None]
    if tuple(mask.shape[1:]) != tail:
        shape = "[n_src, n_dst]" if spans is None else "[n_spans, n_src, n_dst]"
        raise SelectionError(f"a circuit mask must be {shape} = {list(tail)}, got {tuple(in_graph.shape)}")
    return (1.0 - mask.float()) * graph.real.to(mask.device)


class EdgePatch:
    """Hooks that run a forward with the edges of ``W`` `[k, n_src, n_dst]` pruned (see module).

    ablated: `[n | 1, pos | 1, n_src, d]` from `ablated_sources`; the forward runs ``k * n`` rows.
    buffer_dtype: dtype of the stored differences (default the activations').

    The buffered ("live") sources are compacted in forward order, so every destination reads
    a prefix of the buffer: one matmul per destination hook. Without gradients the buffer is
    one preallocated tensor written in place. *Pieced* (when ``W`` needs gradients, for learned
    masks, or with ``pieced=True``, for models split over devices) the per-hook differences are
    kept as separate tensors, each on its own layer's device and read by its own matmul there,
    so autograd sees no in-place writes and saves no copies, and only the corrections `[k, j,
    n * pos * d]` cross devices.
    """

    def __init__(self, graph: Graph, ablated: torch.Tensor, W: torch.Tensor, *,
                 buffer_dtype: torch.dtype | None = None, spans: Spans | None = None, pieced: bool | None = None,
                 prefill: torch.Tensor | None = None, kept_sums: bool = True):
        """prefill: `[n, pos, n_pre, d]` the differences of sources ``[0, n_pre)`` for a forward
        that starts after them (`CleanPrefix`): their hooks do not run, the buffer holds these.
        kept_sums: let groups with fewer kept than pruned incoming edges use the kept form (see
        `_correction`; False sums over the pruned edges everywhere, for comparison)."""
        self.graph, self.ablated, self.buffer_dtype = graph, ablated, buffer_dtype
        self.k = W.shape[0]
        self.differentiable = W.requires_grad
        self.pieced = self.differentiable if pieced is None else pieced or self.differentiable
        if (W.ndim == 4) != (spans is not None) or (spans is not None and W.shape[1] != len(spans)):
            raise SelectionError(f"position-aware masks are [k, n_spans, n_src, n_dst] with their spans; got W "
                                 f"{tuple(W.shape)} and {'no spans' if spans is None else f'{len(spans)} spans'}")
        # Per span: the flat token indices (into [n * pos]) it holds, and the inverse of their
        # concatenation (the corrections are computed span by span, then put back in token order).
        self.span_tokens: list[torch.Tensor] | None = None
        if spans is not None:
            order, bounds = spans.order()
            self.span_tokens = [order[a:b] for a, b in bounds]
            self.span_inverse = torch.argsort(order)
        # Sources with a pruned edge somewhere (every source when W needs gradients: a learned
        # mask at 1 prunes nothing yet, but its gradient runs through these hooks).
        nonzero = (W.detach() != 0) | self.differentiable
        if spans is not None:
            nonzero = nonzero.any(dim=1)  # [k, n_src, n_dst]
        # Destination hooks reading the same prefix (a layer's q, k and v inputs) share one matmul.
        groups: dict[int, list[int]] = {}
        for hook, idx in graph.hook_groups().items():
            groups.setdefault(graph.destinations[idx[0]].prefix, []).extend(idx)
        # Per group, the cheaper form (see `_correction`): "pruned" sums W over the sources with a
        # pruned edge into it; "kept" subtracts (1 - W) over the sources with a kept edge from
        # the running total of all differences (a small circuit: few kept edges, most pruned).
        self.kept_form: set[int] = set()
        live = torch.zeros(graph.n_src, dtype=torch.bool)  # the sources some group's sum reads
        group_needs: dict[int, torch.Tensor] = {}  # prefix -> [prefix] bool: the sources its sum reads
        may_keep = kept_sums and not self.pieced and spans is None  # the kept form needs one contiguous buffer
        for prefix, idx in groups.items():
            cols = slice(min(idx), max(idx) + 1)
            pruned = nonzero[:, :prefix, cols].any(dim=(0, 2)).cpu()
            if not bool(pruned.any()):
                continue
            kept = (W.detach()[:, :prefix, cols] != 1).any(dim=(0, 2)).cpu() if may_keep else pruned
            if may_keep and int(kept.sum()) <= KEPT_FORM_AT_MOST * int(pruned.sum()):
                self.kept_form.add(prefix)
                group_needs[prefix] = kept
            else:
                group_needs[prefix] = pruned
            live[:prefix] |= group_needs[prefix]
        self.live = live.nonzero()[:, 0]  # source indices, in forward order
        slot = torch.cumsum(live.long(), 0) - 1  # slot of each live source
        # Per group, the buffer slots its sum reads, or None where they are most of the live
        # sources before it: then the contiguous prefix of the buffer is cheaper than a gather
        # (the other sources have weight 0 there).
        self.group_slots = {prefix: slot[:prefix][need] if int(need.sum()) <= GATHER_AT_MOST * int(live[:prefix].sum())
                            else None for prefix, need in group_needs.items()}
        n_pre = 0 if prefill is None else prefill.shape[2]
        self.source_hooks: dict[str, tuple[list[int], slice | None]] = {}
        self.ablated_sums: dict[str, torch.Tensor] = {}  # per source hook: its ablated outputs summed
        for hook, idx in graph.source_groups().items():
            if idx[0] < n_pre:
                continue
            chosen = [i for i in idx if live[i]]
            if chosen:
                self.source_hooks[hook] = (chosen, slice(int(slot[chosen[0]]), int(slot[chosen[-1]]) + 1))
            elif self.kept_form:
                self.source_hooks[hook] = ([], None)
            if self.kept_form:
                self.ablated_sums[hook] = ablated.index_select(2, torch.tensor(idx, device=ablated.device)).sum(2)
        self.dest_hooks: dict[str, tuple[int, slice, slice, int]] = {}
        for hook, idx in graph.hook_groups().items():
            prefix = graph.destinations[idx[0]].prefix
            span = slice(idx[0], idx[-1] + 1)
            if bool(nonzero[:, :prefix, span].any()):
                shared = slice(min(groups[prefix]), max(groups[prefix]) + 1)
                local = slice(idx[0] - shared.start, idx[-1] + 1 - shared.start)
                self.dest_hooks[hook] = (prefix, shared, local, int(live[:prefix].sum()))
        # The running total of all differences, for kept-form groups: hook sums `[k, n, pos, d]`
        # not yet added (firing order may differ from source order in parallel blocks), the sum
        # so far and how many sources it covers.
        self._pending: list[tuple[int, int, torch.Tensor]] = []  # (first source, end, sum)
        self._total: torch.Tensor | None = None
        self._covered = n_pre
        if self.kept_form and n_pre:
            self._total = prefill.sum(2)[None].expand(self.k, *prefill.shape[:2], prefill.shape[3])
        self._deltas: dict[int, torch.Tensor] = {}
        self.W_live = W[..., self.live.to(W.device), :]  # [k, (n_spans,) n_live, n_dst]
        self.buffer: torch.Tensor | None = None
        self.pieces: list[tuple[slice, torch.Tensor]] = []  # (buffer slots, [k, s, n, pos, d])
        pre = self.live[self.live < n_pre]
        if len(pre):  # the skipped sources' differences, source-major and tiled over the k variants
            diff = prefill.index_select(2, pre.to(prefill.device)).permute(2, 0, 1, 3)[None]
            diff = diff.expand(self.k, *diff.shape[1:]).to(buffer_dtype or prefill.dtype)
            if self.pieced:
                self.pieces.append((slice(0, len(pre)), diff))
            else:
                self.buffer = torch.empty((self.k, len(self.live), *diff.shape[2:]), dtype=diff.dtype,
                                          device=diff.device)
                self.buffer[:, : len(pre)] = diff

    def hooks(self) -> dict[str, Callable]:
        """Forward hooks (source hooks record, destination hooks rebuild; the names never overlap)."""
        out: dict[str, Callable] = {hook: self._record(hook, idx, slots)
                                    for hook, (idx, slots) in self.source_hooks.items()}
        out.update({hook: self._rebuild(*spec) for hook, spec in self.dest_hooks.items()})
        return out

    def _record(self, hook: str, idx: list[int], slots: slice | None) -> Callable:
        group = self.graph.source_groups()[hook]
        first = group[0]
        local = torch.tensor([i - first for i in idx], dtype=torch.long)
        sources = torch.tensor(idx, dtype=torch.long)
        ablated_sum = self.ablated_sums.get(hook)

        def record(x: torch.Tensor, ctx) -> None:
            x4 = x if x.ndim == 4 else x[:, :, None]
            rows, pos = x4.shape[:2]
            if ablated_sum is not None:  # this hook's share of the running total `[k, n, pos, d]`
                whole = x4.sum(2).reshape(self.k, rows // self.k, pos, -1)
                self._pending.append((first, group[-1] + 1, whole - ablated_sum[:, :pos].to(whole.device, whole.dtype)))
            if slots is None:
                return
            current = x4.index_select(2, local.to(x.device))
            ablated = self.ablated[:, :pos].index_select(2, sources.to(self.ablated.device)).to(x.device)
            diff = current.reshape(self.k, rows // self.k, *current.shape[1:]) - ablated.to(current.dtype)
            diff = diff.permute(0, 3, 1, 2, 4)  # source-major: [k, s, n, pos, d]
            dtype = self.buffer_dtype or diff.dtype
            if self.pieced:
                self.pieces.append((slots, diff.to(dtype)))
                return
            if self.buffer is None:
                shape = (self.k, len(self.live), *diff.shape[2:])
                self.buffer = torch.empty(shape, dtype=dtype, device=diff.device)
            self.buffer[:, slots] = diff
            return

        return record

    def _total_before(self, prefix: int) -> torch.Tensor:
        """sum over sources ``[0, prefix)`` of (current - ablated): `[k, n, pos, d]`."""
        ready = [item for item in self._pending if item[1] <= prefix]
        for item in sorted(ready):
            self._total = item[2] if self._total is None else self._total + item[2]
            self._covered += item[1] - item[0]
            self._pending.remove(item)
        if self._covered != prefix or self._total is None:
            raise MechscopeError(f"edge patch: the running total covers {self._covered} sources where a destination "
                                 f"reads {prefix}; a source hook did not fire before its readers")
        return self._total

    def _rebuild(self, prefix: int, shared: slice, local: slice, n_live: int) -> Callable:
        """The hook rebuilding destinations ``local`` of the group ``shared`` that reads sources
        ``[0, prefix)`` (``n_live`` buffered): the group's correction `[k * n, pos, j, d]` is
        computed by its first hook and reused by the others."""

        def rebuild(x: torch.Tensor, ctx) -> torch.Tensor:
            if n_live == 0 and prefix not in self.kept_form:
                return x
            delta = self._deltas.get(prefix)
            if delta is None or delta.dtype != x.dtype or delta.device != x.device:
                delta = self._deltas[prefix] = self._correction(prefix, shared, n_live, x.dtype, x.device)
            x4 = x if x.ndim == 4 else x[:, :, None]
            out = x4 - delta[:, :, local]
            return out if x.ndim == 4 else out[:, :, 0]

        return rebuild

    def _correction(self, prefix: int, shared: slice, n_live: int, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
        """sum_u W[u, v] (current(u) - ablated(u)) for destinations ``shared``: `[k * n, pos, j, d]`
        on ``device`` (W of each token's span for position-aware masks). Kept form: the same sum as
        the running total of every source's difference minus sum_u (1 - W[u, v]) (current(u) -
        ablated(u)), the second sum over the few sources with a kept edge."""
        if not self.pieced and self.span_tokens is None:  # one buffer: `_buffer_correction`
            delta, (k, n, pos, d) = self._buffer_correction(prefix, shared, n_live, dtype, device)
            return delta.reshape(k, -1, n, pos, d).permute(0, 2, 3, 1, 4).reshape(k * n, pos, -1, d)
        if self.pieced:
            parts = [(slots, diff) for slots, diff in self.pieces if slots.start < n_live]
        else:
            parts = [(slice(0, n_live), self.buffer[:, :n_live])]  # contiguous: one batched matmul
        k, _, n, pos, d = parts[0][1].shape
        if self.span_tokens is None:
            weights = self.W_live[:, :n_live, shared].transpose(1, 2).to(dtype)  # [k, j, s]
            delta = self._weighted(weights, parts, n_live, lambda diff: diff, device)  # [k, j, n * pos * d]
        else:
            pieces = []
            for span, tokens in enumerate(self.span_tokens):
                weights = self.W_live[:, span, :n_live, shared].transpose(1, 2).to(dtype)
                pieces.append(self._weighted(weights, parts, n_live, lambda diff, index=tokens: diff.flatten(2, 3)
                                             .index_select(2, index.to(diff.device)), device))
            joined = torch.cat([p.reshape(k, -1, len(t), d) for p, t in zip(pieces, self.span_tokens)], dim=2)
            delta = joined.index_select(2, self.span_inverse.to(device))  # [k, j, n * pos, d]
        return delta.reshape(k, -1, n, pos, d).permute(0, 2, 3, 1, 4).reshape(k * n, pos, -1, d)

    def _buffer_correction(self, prefix: int, shared: slice, n_live: int, dtype: torch.dtype,
                           device: torch.device) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """`_correction` from the one contiguous buffer, reading only the group's own sources
        (gathered, or the buffer's prefix): ``(delta [k, j, n * pos * d], (k, n, pos, d))``."""
        slots = self.group_slots[prefix]
        if slots is None:
            W = self.W_live[:, :n_live, shared]
            parts = [(slice(0, n_live), self.buffer[:, :n_live])] if n_live else []
        else:
            W = self.W_live[:, slots.to(self.W_live.device), shared]
            parts = [(slice(0, len(slots)), self.buffer.index_select(1, slots.to(self.buffer.device)))] if len(slots) else []
        if prefix not in self.kept_form:
            k, _, n, pos, d = parts[0][1].shape
            return self._weighted(W.transpose(1, 2).to(dtype), parts, W.shape[1], lambda diff: diff, device), (k, n, pos, d)
        total = self._total_before(prefix).to(device, dtype)  # [k, n, pos, d]
        k, n, pos, d = total.shape
        delta = total.reshape(k, 1, -1).expand(k, shared.stop - shared.start, -1)
        if parts:
            kept = self._weighted((1.0 - W).transpose(1, 2).to(dtype), parts, W.shape[1], lambda diff: diff, device)
            delta = delta - kept
        return delta, (k, n, pos, d)

    @staticmethod
    def _weighted(weights: torch.Tensor, parts: list, n_live: int, select: Callable,
                  device: torch.device) -> torch.Tensor:
        """sum over the buffered pieces of ``weights[:, :, slots] @ select(piece)``: `[k, j, ...]`
        flattened on ``device`` (``weights`` `[k, j, n_live]`, pieces `[k, s, n, pos, d]`), each
        product computed on its piece's device."""
        delta = None
        for slots, diff in parts:
            stop = min(slots.stop, n_live)
            chosen = select(diff[:, : stop - slots.start])
            w = weights[:, :, slots.start:stop].to(chosen.device)
            term = torch.bmm(w, chosen.reshape(*chosen.shape[:2], -1).to(w.dtype)).to(device)
            delta = term if delta is None else delta + term
        return delta


class CleanPrefix:
    """The clean run of ``tokens`` `[n, pos]`, so that a patched forward whose pruned edges all
    enter layers ``>= L`` skips blocks ``0 .. L-1`` (they run exactly as in the clean run): its
    residual before every block (``resid[l]`` `[n, pos, d]`), its sources' differences from
    the ablated ones (``diff`` `[n, pos, n_src, d]`) and its ``logits`` `[n, pos, vocab]`."""

    def __init__(self, model, graph: Graph, tokens: torch.Tensor, ablated: torch.Tensor):
        names = [f"blocks.{l}.resid_pre" for l in range(graph.n_layers)] + source_names(graph)
        with torch.no_grad():
            self.logits, cache = model.run_with_cache(tokens, list(dict.fromkeys(names)))
        self.tokens = tokens
        self.resid = [cache[f"blocks.{l}.resid_pre"] for l in range(graph.n_layers)]
        clean = stack_sources(graph, cache)
        self.diff = clean - ablated.to(clean.device, clean.dtype).expand_as(clean)


def start_layer(graph: Graph, W: torch.Tensor) -> int:
    """The first block a patched forward with weights ``W`` must run: the layer of the first
    destination with a pruned incoming edge (the last block when only the logits have one)."""
    touched = (W.detach() != 0).flatten(0, -2).any(0).cpu()  # [n_dst]
    if not bool(touched.any()):
        return graph.n_layers - 1
    first = int(touched.nonzero()[0, 0])
    return min(graph.destinations[first].layer, graph.n_layers - 1)


def patched_logits(model, graph: Graph, tokens: torch.Tensor, ablated: torch.Tensor, W: torch.Tensor, *,
                   buffer_dtype: torch.dtype | None = None, logits_at: torch.Tensor | None = None,
                   spans: Spans | None = None, prefix: CleanPrefix | None = None) -> torch.Tensor:
    """Logits `[k * n, pos, vocab]` of ``tokens`` `[n, pos]` with the ``k`` masks of ``W``
    `[k, n_src, n_dst]` (or position-aware `[k, n_spans, n_src, n_dst]` with the ``spans`` of
    ``tokens``) applied (variant-major rows). Gradients flow to ``W`` when it needs them.
    logits_at: `[n, j]` positions to unembed (returns `[k * n, j, vocab]`). prefix: the clean
    run of ``tokens`` (`CleanPrefix`): the forward then starts at `start_layer` instead of 0."""
    if spans is not None:
        spans.check(tokens)
    k = W.shape[0]
    rows = tokens.repeat(k, 1)
    at = None if logits_at is None else logits_at.repeat(k, 1)
    start = 0 if prefix is None or W.requires_grad else start_layer(graph, W)
    if start == 0:
        patch = EdgePatch(graph, ablated, W, buffer_dtype=buffer_dtype, spans=spans, pieced=len(model.devices) > 1)
        with model.hooks(patch.hooks()):
            return model(rows, logits_at=at)
    if prefix.tokens is not tokens and not torch.equal(prefix.tokens, tokens):
        raise SelectionError("this CleanPrefix was recorded on other prompts")
    n_pre = graph.src_index(start, 0)
    patch = EdgePatch(graph, ablated, W, buffer_dtype=buffer_dtype, spans=spans, pieced=len(model.devices) > 1,
                      prefill=prefix.diff[:, :, :n_pre])
    with model.hooks(patch.hooks()):
        return model.run_from(start, prefix.resid[start].repeat(k, 1, 1), rows, logits_at=at)
