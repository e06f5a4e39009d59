"""How faithful a subgraph of an attribution graph is, measured by intervention: everything
outside it is ablated and the logit nodes' values compared with the full model's and with
everything ablated, ``faithfulness = (subgraph - empty) / (full - empty)`` per logit.

A subgraph is a set of feature and error nodes (tokens always stay; default: the nodes a
pruned graph kept). Ablating a feature zeroes its activation at its (layer, position); any
other latent active at that (layer, position) outside the graph's feature nodes counts as
outside too. Ablating an error node removes the MLP's error term there. Two models:

- ``"replacement"``: every MLP is its transcoder's reconstruction from the live input plus the
  clean prompt's error term (`graphs.interventions`); ``constrained=True`` holds the features
  at their clean activations and ``freeze_attention=True`` freezes patterns and norm scales,
  which together make the model linear, so the faithfulness is then the kept share of each
  logit's direct input (a check of the graph itself).
- ``"real"``: the model's own MLPs, minus the decoder contributions of the features outside
  (recomputed from the live input) and minus the live error term outside (the MLP output minus
  its transcoder's reconstruction): kept everything, it is the real model exactly.

A logit's value is its demeaned logit at the last position (before any final softcap).
"""

from __future__ import annotations

from contextlib import ExitStack

import pandas as pd
import torch

from ..errors import SelectionError
from ..models.hooked import HookedModel
from .interventions import _clean_state
from .result import AttributionGraph
from .transcoders import TranscoderSet

MODES = ("replacement", "real")


def subgraph_faithfulness(model: HookedModel, transcoders: TranscoderSet, graph: AttributionGraph,
                          keep: torch.Tensor | None = None, *, mode: str = "replacement", constrained: bool = False,
                          freeze_attention: bool = False) -> pd.DataFrame:
    """One row per logit node of ``graph``: logit, prob, full, subgraph, empty, faithfulness
    (see the module docstring); ``keep`` `[graph.n_nodes]` bool (default ``graph.kept``)."""
    if mode not in MODES:
        raise SelectionError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if constrained and mode != "replacement":
        raise SelectionError("constrained=True holds the replacement model's features: use mode='replacement'")
    keep = graph.kept if keep is None else keep
    if keep is None:
        raise SelectionError("give keep= (a [n_nodes] bool mask) or a pruned graph (graph.prune())")
    if keep.shape != (graph.n_nodes,) or keep.dtype != torch.bool:
        raise SelectionError(f"keep must be a bool mask [{graph.n_nodes}], got {tuple(keep.shape)} {keep.dtype}")
    tokens = graph.tokens[None].to(model.device)
    transcoders.check(model)
    clean = _clean_state(model, transcoders, tokens)
    n_pos, shape = graph.n_pos, (model.cfg.n_layers, graph.n_pos)
    features = torch.zeros(*shape, max(tc.cfg.d_sae for tc in transcoders), dtype=torch.bool)
    chosen = graph.feature_index[keep[: graph.n_features]]
    features[chosen[:, 0], chosen[:, 1], chosen[:, 2]] = True
    errors = keep[graph.first_error : graph.first_token].view(shape)
    everything = (torch.ones_like(features), torch.ones_like(errors))
    nothing = (torch.zeros_like(features), torch.zeros_like(errors))
    values = {}
    for name, (feature_mask, error_mask) in (("full", everything), ("subgraph", (features, errors)), ("empty", nothing)):
        values[name] = _logit_values(model, transcoders, tokens, graph, clean, feature_mask, error_mask, mode,
                                     constrained, freeze_attention, n_pos)
    span = values["full"] - values["empty"]
    return pd.DataFrame({"logit": graph.logit_labels, "prob": graph.logit_probs.double().numpy(),
                         "full": values["full"].double().numpy(), "subgraph": values["subgraph"].double().numpy(),
                         "empty": values["empty"].double().numpy(),
                         "faithfulness": ((values["subgraph"] - values["empty"]) / span).double().numpy()})


def _logit_values(model, transcoders, tokens, graph, clean, feature_mask, error_mask, mode, constrained,
                  freeze_attention, n_pos) -> torch.Tensor:
    live: dict[int, torch.Tensor] = {}

    def read(layer: int):
        def hook(x, ctx) -> None:
            live[layer] = x
        return hook

    def write(layer: int):
        tc = transcoders[layer]
        mask = feature_mask[layer, :, : tc.cfg.d_sae].to(tc.W_dec.dtype)
        error_kept = error_mask[layer].to(tc.W_dec.dtype)[:, None]

        def hook(out, ctx):
            x = live.pop(layer).to(tc.W_enc.dtype)
            acts = clean[layer][0].expand(x.shape[0], -1, -1).clone() if constrained else tc.encode(x)
            acts[:, 0] = 0
            if mode == "replacement":
                new = tc.decode(acts * mask, x) + clean[layer][1] * error_kept
            else:
                error = out.to(tc.W_dec.dtype) - tc.decode(acts, x)
                new = out.to(tc.W_dec.dtype) - (acts * (1 - mask)) @ tc.W_dec - error * (1 - error_kept)
            return new.to(out.dtype)
        return hook

    hooks = {}
    for layer, tc in transcoders.items():
        hooks[tc.cfg.hook_name] = read(layer)
        hooks[tc.cfg.output_hook_name] = write(layer)
    with ExitStack() as stack, torch.no_grad():
        if freeze_attention:
            stack.enter_context(model.linearized_at(tokens))
        stack.enter_context(model.hooks(hooks))
        seen: dict[str, torch.Tensor] = {}
        stack.enter_context(model.hooks({"ln_final.out": lambda x, ctx: seen.update(final=x[0, -1])}))
        model(tokens, return_type=None)
    w_u, b_u = model.weights().W_U.detach().float(), model.weights().b_U.detach().float()
    ids = graph.logit_tokens
    if bool((ids < 0).any()):
        raise SelectionError("subgraph faithfulness needs token logits, not custom directions")
    return seen["final"].float() @ (w_u[:, ids] - w_u.mean(1, keepdim=True)) + (b_u[ids] - b_u.mean())
