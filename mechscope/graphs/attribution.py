"""Attribution graphs on per-layer transcoders (Ameisen et al. 2025, "Circuit Tracing").

    graph = ms.attribution_graph(model, transcoders, "The capital of France is")
    graph.top(10)                                  # the nodes with the most influence on the logits
    graph.edges(min_weight=0.1)                    # DataFrame: target, source, weight

The replacement model: attention patterns and norm scales frozen at the prompt
(`HookedModel.linearized_at`), every MLP output replaced by its transcoder's reconstruction
plus an error node (the MLP output minus that reconstruction, a constant), so the residual
stream is an affine function of the nodes: active features (layer, position, latent; a
feature's output is its activation times its decoder row), error nodes (layer, position),
token embeddings (position). A transcoder's skip connection (``x @ W_skip``) is linear in
its input and stays in the graph as a path, not a node.

The adjacency ``A[target, source]`` holds direct effects: the change of the target (a
feature's pre-activation, or a logit) per unit of the source's output, through attention
and the residual stream only (the paths through other nodes are those nodes' own edges).
One forward of the frozen model on ``batch_size`` copies of the prompt is kept, and each
backward fills ``batch_size`` rows: a target's input direction (its encoder column, or the
demeaned unembedding of a logit) is injected in its own copy, and the gradient at each
layer's MLP output dotted with each source's output vector is the edge weight. Every row
satisfies ``value = sum(row) + bias``, where ``bias`` is what the constants (biases,
``b_dec``, ``b_enc``) contribute.

Logit nodes: the top logits at the last position until their probabilities sum to
``logit_prob`` (at most ``max_logits``), or given tokens, or custom directions on
``ln_final.out`` (e.g. a logit difference). A logit's value is its demeaned logit before any
final softcap (logit minus the mean logit, which does not change the probabilities).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import SelectionError
from ..models.hooked import HookedModel, TokensLike
from .influence import row_normalised
from .result import AttributionGraph
from .transcoders import TranscoderSet

LogitTargets = Sequence[int | str] | Mapping[str, torch.Tensor] | None


@dataclass
class _Layer:
    """One layer's active features and error at the prompt: ``positions``/``latents`` `[n]`,
    ``acts`` `[n]`, ``error`` `[p, d]`, ``constant`` `[p, d]` (the MLP output minus the skip)."""

    positions: torch.Tensor
    latents: torch.Tensor
    acts: torch.Tensor
    pre: torch.Tensor  # [n] pre-activations
    error: torch.Tensor
    constant: torch.Tensor


@dataclass
class _Logits:
    labels: list[str]
    token_ids: torch.Tensor  # [n] (-1 for a custom direction)
    vectors: torch.Tensor  # [n, d_model] on ln_final.out
    values: torch.Tensor  # [n] the demeaned logits (custom: vector . ln_final.out)
    probs: torch.Tensor  # [n] (NaN for a custom direction)


def attribution_graph(model: HookedModel, transcoders: TranscoderSet, prompt: TokensLike, *,
                      targets: LogitTargets = None, max_logits: int = 10, logit_prob: float = 0.95,
                      max_features: int | None = None, batch_size: int | None = None, skip_first: bool = True,
                      progress: bool = True) -> AttributionGraph:
    """The attribution graph of ``prompt`` (one text or token ids `[1, p]`) through
    ``transcoders`` (one per layer, `TranscoderSet`), see the module docstring.

    targets: None (top logits, see ``max_logits`` / ``logit_prob``), token ids or strings, or
      ``{label: direction [d_model]}`` read on ``ln_final.out`` at the last position.
    max_features: at most this many feature nodes, chosen in order of their influence on the
      logits (as estimated from the rows computed so far, in rounds of ``batch_size``), each
      with its incoming edges; the other active features are left out of the graph (their
      summed edges into each row are `AttributionGraph.dropped`). None: every active feature.
    batch_size: rows per backward (copies of the prompt in the one kept forward); None: at most
      32, as many as fit in a quarter of the memory available (`kept_forward_bytes` each).
    skip_first: position 0 (the attention sink, whose activations dwarf the others) has no
      feature nodes; its MLP outputs are error nodes.
    """
    transcoders.check(model)
    tokens = _one_prompt(model, prompt)
    if batch_size is None:
        batch_size = _auto_batch(model, tokens.shape[1])
    if batch_size < 1 or max_logits < 1 or not 0 < logit_prob <= 1:
        raise SelectionError(f"batch_size and max_logits must be >= 1 and logit_prob in (0, 1], got {batch_size}, "
                             f"{max_logits}, {logit_prob}")
    layers, last_logits, final, embed = _clean_pass(model, transcoders, tokens, skip_first)
    logits = _logit_targets(model, last_logits, final, targets, max_logits, logit_prob)
    n_pos, n_layers, n_logits = tokens.shape[1], model.cfg.n_layers, len(logits.labels)
    kept_gib = batch_size * kept_forward_bytes(model, n_pos) / 2**30
    n_active = sum(len(layer.acts) for layer in layers)
    n_sources = n_active + n_layers * n_pos + n_pos
    budget = n_active if max_features is None else min(max_features, n_active)
    ordered = budget < n_active  # rows chosen by influence: their normalised copy is kept alongside
    _check_memory((n_logits + budget) * (2 if ordered else 1), n_sources, n_logits)
    rows = torch.zeros(n_logits + budget, n_sources)  # the logits' rows, then features' in the order computed
    normalised = torch.zeros_like(rows) if ordered else None
    if progress:
        print(f"attribution graph: {n_pos} tokens, {n_active} active features, rows for {n_logits} logits and "
              f"{budget} features: {rows.numel() * 4 / 2**20:.0f} MiB of edges, {math.ceil(len(rows) / batch_size)} "
              f"backward passes of {batch_size} rows on a kept forward of about {kept_gib:.1f} GiB")
    tracer = _Tracer(model, transcoders, tokens, layers, embed, batch_size)
    feature_layer = torch.cat([torch.full((len(layer.acts),), i) for i, layer in enumerate(layers)])
    feature_pos = torch.cat([layer.positions for layer in layers])
    feature_latent = torch.cat([layer.latents for layer in layers])
    row_of = torch.full((n_active,), -1)  # feature -> its row in `rows`
    bar = tqdm(total=len(rows), disable=not progress, desc="attribution rows")
    for start in range(0, n_logits, batch_size):
        chunk = range(start, min(n_logits, start + batch_size))
        rows[chunk.start : chunk.stop] = tracer.rows([("logit", None, n_pos - 1, logits.vectors[i]) for i in chunk])
        if ordered:
            normalised[chunk.start : chunk.stop] = row_normalised(rows[chunk.start : chunk.stop])
        bar.update(len(chunk))
    weights = torch.nan_to_num(logits.probs.float(), nan=1.0 / n_logits)
    filled = n_logits
    while filled < len(rows):
        take = min(batch_size, len(rows) - filled)
        if budget == n_active:
            chosen = torch.arange(filled - n_logits, filled - n_logits + take)
        else:  # the most influential features whose rows are still missing
            influence = _feature_influence(normalised[:filled], row_of, weights, n_layers)
            influence[row_of >= 0] = -1.0
            chosen = torch.topk(influence, take).indices
        rows[filled : filled + take] = tracer.rows([
            ("feature", int(feature_layer[i]), int(feature_pos[i]),
             transcoders[int(feature_layer[i])].W_enc[:, int(feature_latent[i])].detach()) for i in chosen.tolist()])
        if ordered:
            normalised[filled : filled + take] = row_normalised(rows[filled : filled + take])
        row_of[chosen] = torch.arange(filled, filled + take)
        filled += take
        bar.update(take)
    bar.close()

    selected = (row_of >= 0).nonzero()[:, 0]  # in node order (layer, position, latent)
    columns = torch.cat([selected, torch.arange(n_active, n_sources)])
    target_rows = torch.cat([row_of[selected], torch.arange(n_logits)])
    n_nodes = len(columns) + n_logits
    adjacency = torch.zeros(n_nodes, n_nodes)
    targets_at = torch.cat([torch.arange(len(selected)), torch.arange(n_nodes - n_logits, n_nodes)])
    adjacency[targets_at[:, None], torch.arange(len(columns))[None]] = rows[target_rows][:, columns]
    has_row = torch.zeros(n_nodes, dtype=torch.bool)
    has_row[targets_at] = True
    values = torch.zeros(n_nodes)
    values[: len(selected)] = torch.cat([layer.pre for layer in layers])[selected]
    values[n_nodes - n_logits :] = logits.values
    full = torch.zeros(n_nodes)
    full[targets_at] = rows[target_rows].sum(-1)
    return AttributionGraph(
        tokens=tokens[0].cpu(), token_texts=model.to_str_tokens(tokens[0]) if model.tokenizer else
        [str(t) for t in tokens[0].tolist()], n_layers=n_layers, n_active=n_active,
        feature_index=torch.stack([feature_layer, feature_pos, feature_latent], -1)[selected].long(),
        activations=torch.cat([layer.acts for layer in layers])[selected],
        logit_labels=logits.labels, logit_tokens=logits.token_ids, logit_probs=logits.probs,
        adjacency=adjacency, has_row=has_row, values=values,
        bias=torch.where(has_row, values - full, torch.zeros(())), dropped=full - adjacency.sum(-1))


def kept_forward_bytes(model: HookedModel, n_pos: int) -> int:
    """An estimate of what the kept forward holds for the backward per copy of an ``n_pos``-token
    prompt: per layer about a dozen ``[p, d_model]`` tensors and two ``[heads, p, p]`` ones, fp32."""
    cfg = model.cfg
    return cfg.n_layers * (12 * n_pos * cfg.d_model + 2 * cfg.n_heads * n_pos * n_pos) * 4


def _auto_batch(model: HookedModel, n_pos: int) -> int:
    """The most copies (at most 32, at least 1) whose kept forward fits in a quarter of the
    memory available now."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 32
    return max(1, min(32, int(available / 4 // kept_forward_bytes(model, n_pos))))


def _check_memory(n_rows: int, n_sources: int, n_logits: int) -> None:
    """A `SelectionError` when ``n_rows`` fp32 edge rows of ``n_sources`` would take over half
    of the memory available now."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no estimate
        return
    needed = n_rows * n_sources * 4
    if needed > available / 2:
        fit = int(available / 2 / 4 / n_sources) - n_logits
        raise SelectionError(f"the edge rows need {needed / 2**30:.1f} GiB ({n_rows} rows x {n_sources} "
                             f"sources), over half of the {available / 2**30:.1f} GiB available: pass "
                             f"max_features={max(1, fit)} or fewer (rows in order of influence)")


def _feature_influence(normalised: torch.Tensor, row_of: torch.Tensor, weights: torch.Tensor,
                       n_layers: int) -> torch.Tensor:
    """`[n_active]`: each feature's influence on the logits through the rows computed so far
    (``normalised`` `[r, n_sources]`: `influence.row_normalised` rows, the logits' first,
    weighted by ``weights``; ``row_of`` maps a feature to its row or -1), summed over paths."""
    rows = normalised
    n_active = len(row_of)
    has = row_of >= 0
    current = torch.zeros(len(rows))
    current[: len(weights)] = weights
    total = torch.zeros(rows.shape[1])
    for _ in range(n_layers + 2):  # a path visits each layer once, then the logits
        reach = current @ normalised
        if not bool(reach.any()):
            break
        total += reach
        current = torch.zeros(len(rows))
        current[row_of[has]] = reach[:n_active][has]
    return total[:n_active]


def _one_prompt(model: HookedModel, prompt: TokensLike) -> torch.Tensor:
    tokens = model.to_tokens(prompt) if isinstance(prompt, str) else prompt
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long:
        raise SelectionError("an attribution graph is of one prompt: a text, or token ids [1, pos] / [pos]")
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise SelectionError(f"an attribution graph is of one prompt, got token ids of shape {tuple(tokens.shape)}")
    return tokens.to(model.device)


def _clean_pass(model: HookedModel, transcoders: TranscoderSet, tokens: torch.Tensor, skip_first: bool):
    """``(per-layer _Layer, last-position logits [d_vocab], ln_final.out there [d_model], embed
    [p, d])`` of the real model's forward on ``tokens``."""
    names = sorted({"blocks.0.resid_pre", "ln_final.out", *(f"blocks.{l}.mlp.out" for l in transcoders.layers),
                    *(tc.cfg.hook_name for tc in transcoders)})
    logits, cache = model.run_with_cache(tokens, names=names)
    layers = []
    with torch.no_grad():
        for layer, tc in transcoders.items():
            x = cache[tc.cfg.hook_name][0].to(tc.W_enc.dtype)
            pre = tc.pre_activation(x)
            acts = tc.encode(x)
            if skip_first:
                acts[0] = 0
            positions, latents = acts.nonzero(as_tuple=True)
            skip = x @ tc.W_skip if tc.W_skip is not None else torch.zeros_like(tc.b_dec).expand(x.shape[0], -1)
            mlp_out = cache[f"blocks.{layer}.mlp.out"][0].to(tc.W_dec.dtype)
            error = mlp_out - acts @ tc.W_dec - tc.b_dec - skip
            layers.append(_Layer(positions, latents, acts[positions, latents], pre[positions, latents], error,
                                 mlp_out - skip))
    return layers, logits[0, -1], cache["ln_final.out"][0, -1].float(), cache["blocks.0.resid_pre"][0].float()


def _logit_targets(model: HookedModel, logits: torch.Tensor, final: torch.Tensor, targets: LogitTargets,
                   max_logits: int, logit_prob: float) -> _Logits:
    """The logit nodes (see `attribution_graph`); ``logits`` `[d_vocab]` and ``final``
    (``ln_final.out``) `[d_model]` at the last position."""
    w_u, b_u = model.weights().W_U.detach().float(), model.weights().b_U.detach().float()
    probs = torch.softmax(logits.float(), -1)
    if isinstance(targets, Mapping):
        labels = list(targets)
        vectors = torch.stack([_direction(model, v, label) for label, v in targets.items()])
        return _Logits(labels, torch.full((len(labels),), -1), vectors, vectors @ final,
                       torch.full((len(labels),), math.nan))
    if targets is None:
        ranked = torch.argsort(probs, descending=True)[:max_logits]
        cumulative = probs[ranked].cumsum(0)
        ids = ranked[: int((cumulative < logit_prob).sum()) + 1]
    else:
        ids = torch.tensor([model.to_single_token(t) if isinstance(t, str) else int(t) for t in targets])
        if len(ids) == 0 or bool((ids < 0).any() | (ids >= w_u.shape[1]).any()):
            raise SelectionError(f"logit targets must be token ids in [0, {w_u.shape[1]}) or single-token strings, "
                                 f"got {list(targets)}")
    ids = ids.cpu()
    vectors = (w_u[:, ids] - w_u.mean(1, keepdim=True)).T  # [n, d_model]
    values = vectors @ final + (b_u[ids] - b_u.mean())
    labels = [model.to_string([int(i)]) if model.tokenizer else str(int(i)) for i in ids]
    return _Logits(labels, ids, vectors, values, probs[ids].cpu())


def _direction(model: HookedModel, vector: torch.Tensor, label: str) -> torch.Tensor:
    if not isinstance(vector, torch.Tensor) or vector.shape != (model.cfg.d_model,):
        raise SelectionError(f"custom logit target {label!r} must be a direction [d_model] = [{model.cfg.d_model}] "
                             f"on ln_final.out, got {getattr(vector, 'shape', type(vector).__name__)}")
    return vector.detach().float().cpu()


class _Tracer:
    """The frozen replacement model's forward on ``batch_size`` copies of the prompt, kept for
    repeated backward passes; `rows` turns targets into adjacency rows."""

    def __init__(self, model: HookedModel, transcoders: TranscoderSet, tokens: torch.Tensor, layers: list[_Layer],
                 embed: torch.Tensor, batch_size: int, *, value_inputs: bool = False):
        self.layers, self.embed, self.transcoders = layers, embed, transcoders
        self.batch_size, self.n_pos = batch_size, tokens.shape[1]
        self.writers = [_Writers(layer, tc.W_dec.detach(), tokens.shape[1]) for layer, tc in zip(layers, transcoders)]
        live: dict[str, torch.Tensor] = {}
        self.leaves: list[torch.Tensor] = []

        def start(x: torch.Tensor, ctx) -> torch.Tensor:
            leaf = x.detach().clone().requires_grad_(True)
            self.leaves.insert(0, leaf)
            return leaf

        def read(x: torch.Tensor, ctx) -> None:
            live[ctx.name] = x

        def replace(layer: int):
            tc = transcoders[layer]

            def hook(x: torch.Tensor, ctx) -> torch.Tensor:
                leaf = layers[layer].constant.to(x.dtype).expand_as(x).clone().requires_grad_(True)
                self.leaves.append(leaf)
                out = leaf
                if tc.W_skip is not None:
                    out = out + (live[tc.cfg.hook_name].to(tc.W_skip.dtype) @ tc.W_skip).to(x.dtype)
                return out
            return hook

        hooks = {"blocks.0.resid_pre": start, "ln_final.out": read,
                 **{tc.cfg.hook_name: read for tc in transcoders},
                 **{f"blocks.{layer}.mlp.out": replace(layer) for layer in transcoders.layers}}
        layer_range = range(model.cfg.n_layers) if value_inputs else range(0)
        value_names = [f"blocks.{layer}.attn.v" for layer in layer_range]
        mix_names = [f"blocks.{layer}.attn.{part}" for layer in layer_range for part in ("z", "pattern")]
        resid_names = [f"blocks.{layer}.resid_pre" for layer in layer_range if layer > 0]
        hooks.update(dict.fromkeys(value_names + mix_names + resid_names, read))
        with torch.enable_grad(), model.linearized_at(tokens), model.hooks(hooks):
            model(tokens.expand(batch_size, -1), return_type=None)
        self.outputs = {"logit": live["ln_final.out"],
                        **{layer: live[tc.cfg.hook_name] for layer, tc in transcoders.items()}}
        self.values = [live[name] for name in value_names]  # [b, p, kv_heads, d_head] per layer
        self.z = [live[f"blocks.{layer}.attn.z"] for layer in layer_range]  # [b, p, heads, d_head]
        self.patterns = [live[f"blocks.{layer}.attn.pattern"].detach() for layer in layer_range]  # [b, h, q, k]
        self.resid_pre = [self.leaves[0] if value_inputs else None] + [live[name] for name in resid_names]

    def _grad_outputs(self, targets: list[tuple[str, int | None, int, torch.Tensor]]) -> tuple[list, list]:
        grad_outputs: dict = {}
        for row, (kind, layer, position, direction) in enumerate(targets):
            key = "logit" if kind == "logit" else layer
            out = self.outputs[key]
            if key not in grad_outputs:
                grad_outputs[key] = torch.zeros_like(out)
            grad_outputs[key][row, position] = direction.to(out.dtype)
        return [self.outputs[k] for k in grad_outputs], list(grad_outputs.values())

    def value_gradients(self, targets: list[tuple[str, int | None, int, torch.Tensor]], *,
                        per_query_head: bool = False) -> list[torch.Tensor]:
        """Per layer, `[len(targets), p, heads, d_model]`: each target's gradient at that layer's
        residual stream (``resid_pre``) through one head's value path only, carried back through
        the frozen pre-norm and the value projection; needs ``value_inputs=True``. ``heads``:
        the KV heads (the gradient at ``attn.v`` of each), or with ``per_query_head`` the query
        heads (each one's gradient at ``attn.z`` mixed back to its KV head's values through its
        frozen pattern)."""
        outputs, grad_outputs = self._grad_outputs(targets)
        wrt = self.z if per_query_head else self.values
        found = torch.autograd.grad(outputs, wrt, grad_outputs, retain_graph=True, allow_unused=True)
        n, out = len(targets), []
        for layer, (values, resid, grad) in enumerate(zip(self.values, self.resid_pre, found)):
            n_heads = grad.shape[2] if grad is not None else wrt[layer].shape[2]
            per_head = torch.zeros(n, self.n_pos, n_heads, resid.shape[-1])
            if grad is not None:
                group = max(1, n_heads // values.shape[2]) if per_query_head else 1
                for head in range(n_heads):
                    masked = torch.zeros_like(values)
                    if per_query_head:  # z_h[q] = sum_k pattern_h[q, k] v_g[k]: its gradient at v_g
                        masked[:, :, head // group] = torch.einsum("bqd,bqk->bkd", grad[:, :, head],
                                                                   self.patterns[layer][:, head].to(grad.dtype))
                    else:
                        masked[:, :, head] = grad[:, :, head]
                    (back,) = torch.autograd.grad(values, resid, masked, retain_graph=True)
                    per_head[:, :, head] = back[:n].float()
            out.append(per_head)
        return out

    def rows(self, targets: list[tuple[str, int | None, int, torch.Tensor]]) -> torch.Tensor:
        """Edge rows `[len(targets), n_sources]` (at most ``batch_size`` targets; sources: every
        active feature, error node and token, in node order): each
        ``(kind, layer, position, direction)`` is the direction read at ``position`` of the
        transcoder input of ``layer`` (kind "feature") or of ``ln_final.out`` ("logit")."""
        outputs, grad_outputs = self._grad_outputs(targets)
        grads = torch.autograd.grad(outputs, self.leaves, grad_outputs, retain_graph=True, allow_unused=True)
        embed_grad, layer_grads = grads[0], grads[1:]
        n = len(targets)
        parts = []
        for layer, grad in zip(self.layers, layer_grads):
            grad = torch.zeros(n, self.n_pos, self.embed.shape[-1]) if grad is None else grad[:n].float()
            parts.append((layer, grad))
        features = [writers.edges(grad) for writers, (_, grad) in zip(self.writers, parts)]
        errors = [(grad * layer.error.float()).sum(-1) for layer, grad in parts]  # [n, p] each
        tokens = (embed_grad[:n].float() * self.embed).sum(-1) if embed_grad is not None else \
            torch.zeros(n, self.n_pos)
        return torch.cat([*features, *errors, tokens], -1)


class _Writers:
    """One layer's active features as the vectors they write, by position: ``vectors`` `[p,
    slots, d]` (activation times decoder row, zero-padded to the most features at one
    position), and each feature's (position, slot)."""

    def __init__(self, layer: _Layer, w_dec: torch.Tensor, n_pos: int):
        counts = torch.bincount(layer.positions, minlength=n_pos)
        starts = torch.cumsum(counts, 0) - counts
        self.positions = layer.positions
        self.slots = torch.arange(len(layer.positions)) - starts[layer.positions]
        self.vectors = torch.zeros(n_pos, int(counts.max()) if len(counts) else 0, w_dec.shape[1])
        self.vectors[self.positions, self.slots] = layer.acts.float()[:, None] * w_dec[layer.latents].float()

    def edges(self, grad: torch.Tensor) -> torch.Tensor:
        """`[rows, n_features]`: each feature's vector dotted with ``grad`` `[rows, p, d]` at its
        position (one batched matmul over positions, no gather of the gradient)."""
        if not len(self.positions):
            return grad.new_zeros(grad.shape[0], 0)
        per_slot = torch.einsum("rpd,psd->rps", grad, self.vectors)
        return per_slot[:, self.positions, self.slots]
