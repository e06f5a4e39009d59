"""Head loadings against brute force: removing an edge's source vector from one KV head's
values at one layer (and nowhere else: ``attn.v`` minus the vector through the frozen pre-norm
and that head's value projection, computed by hand) in the frozen replacement model changes the
target by exactly that head's loading; the loadings plus the remainder are the edge."""

from __future__ import annotations

import pytest
import torch
from test_graph_attribution import _built

from mechscope.graphs.heads import head_loadings


def _held_mlps(transcoders, layers, live) -> dict:
    """Hooks holding every MLP output at its transcoder's clean features and error (plus the
    live skip path): the frozen replacement model's MLPs. ``live`` holds the transcoder inputs."""
    def replace(layer):
        tc = transcoders[layer]

        def hook(x, ctx):
            skip = live[tc.cfg.hook_name] @ tc.W_skip if tc.W_skip is not None else 0
            return layers[layer].constant + skip
        return hook

    return {f"blocks.{l}.mlp.out": replace(l) for l in transcoders.layers}


def _value_removals(model, tokens, transcoders, graph, target, source):
    """`[n_layers, kv_heads]`: the target's change when the source's vector is removed from each
    (layer, KV head)'s value input, features and errors held at their clean values."""
    from mechscope.graphs.attribution import _clean_pass
    from mechscope.graphs.heads import _source
    from mechscope.models.norms import FrozenNorm

    layers, _, _, embed = _clean_pass(model, transcoders, tokens, True)
    position, vector, first = _source(graph, transcoders, layers, embed, source)
    n_layers, groups = model.cfg.n_layers, model.hook_point("blocks.0.attn.v").n_heads
    _, resid = model.run_with_cache(tokens, names="blocks.*.resid_pre")
    w_v = model.weights().W_V  # [layer][kv_heads, d_model, d_head]
    ln1 = model.adapter.components.ln1
    shifts = [FrozenNorm(model.hf.get_submodule(f"{model.adapter.layers}.{m}.{ln1}"), model.adapter.norm,
                         resid[f"blocks.{m}.resid_pre"][0, position]).apply(vector) for m in range(n_layers)]
    rows = [(m, g) for m in range(n_layers) for g in range(groups)]
    live = {}

    def remove(layer):
        def hook(v, ctx):
            v = v.clone()
            for row, (m, g) in enumerate(rows):
                if m == layer:
                    v[1 + row, position, g] -= shifts[m] @ w_v[m][g]
            return v
        return hook

    hooks = {"ln_final.out": lambda x, ctx: live.setdefault("final", x),
             **{tc.cfg.hook_name: (lambda x, ctx: live.__setitem__(ctx.name, x)) for tc in transcoders},
             **_held_mlps(transcoders, layers, live),
             **{f"blocks.{m}.attn.v": remove(m) for m in range(n_layers)}}
    with torch.no_grad(), model.linearized_at(tokens), model.hooks(hooks):
        model(tokens.expand(len(rows) + 1, -1))
    live = {k: v.detach() for k, v in live.items()}
    if target >= graph.first_logit:
        token = int(graph.logit_tokens[target - graph.first_logit])
        w_u = model.weights().W_U
        value = live["final"][:, -1] @ (w_u[:, token] - w_u.mean(1))
    else:
        layer, pos, latent = graph.feature_index[target].tolist()
        value = live[transcoders[layer].cfg.hook_name][:, pos] @ transcoders[layer].W_enc[:, latent]
    return (value[0] - value[1:]).detach().view(n_layers, groups), first


def _query_head_removals(model, tokens, transcoders, graph, target, source):
    """`[n_layers, heads]`: the target's change when the source's part of one query head's mixed
    values (``attn.z``: its pattern's weight on the source position times the source's value
    vector) is removed, features and errors held."""
    from mechscope.graphs.attribution import _clean_pass
    from mechscope.graphs.heads import _source
    from mechscope.models.norms import FrozenNorm

    layers, _, _, embed = _clean_pass(model, tokens=tokens, transcoders=transcoders, skip_first=True)
    position, vector, first = _source(graph, transcoders, layers, embed, source)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    group = n_heads // model.hook_point("blocks.0.attn.v").n_heads
    _, cache = model.run_with_cache(tokens, names=["blocks.*.resid_pre", "blocks.*.attn.pattern"])
    w_v = model.weights().W_V
    ln1 = model.adapter.components.ln1
    rows = [(m, h) for m in range(first, n_layers) for h in range(n_heads)]
    live = {}

    def remove(layer):
        norm = FrozenNorm(model.hf.get_submodule(f"{model.adapter.layers}.{layer}.{ln1}"), model.adapter.norm,
                          cache[f"blocks.{layer}.resid_pre"][0, position])
        pattern = cache[f"blocks.{layer}.attn.pattern"][0]

        def hook(z, ctx):
            z = z.clone()
            for row, (m, h) in enumerate(rows):
                if m == layer:
                    dv = norm.apply(vector) @ w_v[m][h // group]
                    z[1 + row, :, h] -= pattern[h, :, position, None] * dv
            return z
        return hook

    hooks = {"ln_final.out": lambda x, ctx: live.setdefault("final", x),
             **{tc.cfg.hook_name: (lambda x, ctx: live.__setitem__(ctx.name, x)) for tc in transcoders},
             **_held_mlps(transcoders, layers, live),
             **{f"blocks.{m}.attn.z": remove(m) for m in range(first, n_layers)}}
    with torch.no_grad(), model.linearized_at(tokens), model.hooks(hooks):
        model(tokens.expand(len(rows) + 1, -1))
    token = int(graph.logit_tokens[target - graph.first_logit])
    w_u = model.weights().W_U
    value = (live["final"][:, -1] @ (w_u[:, token] - w_u.mean(1))).detach()
    out = torch.zeros(n_layers, n_heads)
    out[first:] = (value[0] - value[1:]).view(n_layers - first, n_heads)
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_loadings_are_the_effect_of_removing_the_source_from_one_head(family):
    model, tokens, transcoders, graph = _built(family)
    logit = graph.first_logit
    candidates = [(logit, int(graph.adjacency[logit, : graph.n_features].abs().argmax())),  # feature -> logit
                  (logit, graph.token_node(2)),  # token -> logit
                  (logit, graph.error_node(0, 3))]  # error -> logit
    late = int((graph.feature_index[:, 0] == model.cfg.n_layers - 1).nonzero()[0, 0])
    candidates.append((late, graph.token_node(1)))  # token -> feature
    result = head_loadings(model, transcoders, graph, candidates)
    torch.testing.assert_close(result.loadings.sum((1, 2)) + result.remainder, result.weights)
    for i, (target, source) in enumerate(candidates):
        measured, first = _value_removals(model, tokens, transcoders, graph, target, source)
        scale = max(1e-3, float(measured.abs().max()))
        measured[:first] = 0  # before the source writes, its vector is in no value input to remove
        assert (result.loadings[i] - measured).abs().max() <= 1e-4 * scale, (i, result.loadings[i], measured)
        assert not result.loadings[i, :first].any()  # no head before the source reads it
    assert result.loadings.abs().sum() > 1e-3
    frame = result.to_dataframe()
    assert set(frame.columns) == {"edge", "layer", "head", "loading", "weight"} and len(frame)
    by_query = head_loadings(model, transcoders, graph, candidates, per_query_head=True)
    group = model.cfg.n_heads // result.loadings.shape[2]
    summed = by_query.loadings.view(len(candidates), model.cfg.n_layers, -1, group).sum(-1)
    torch.testing.assert_close(summed, result.loadings, rtol=1e-4, atol=1e-6)  # a group's shares sum to its KV head
    assert by_query.loadings.shape[2] == model.cfg.n_heads and by_query.per_query_head
    target, source = candidates[0]
    measured = _query_head_removals(model, tokens, transcoders, graph, target, source)
    scale = max(1e-3, float(measured.abs().max()))
    assert (by_query.loadings[0] - measured).abs().max() <= 1e-4 * scale + 2e-6
