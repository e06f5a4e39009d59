"""Attribution graphs checked against brute force: every edge equals the change of its target
when its source is removed from the frozen replacement model (features and errors held at
their clean values, patterns and norm scales frozen), measured by running that model, one
removal per batch row; every row plus its bias gives the target's value; with transcoders
that never fire the graph is error nodes whose last-layer edge to a logit is the direct logit
attribution of that MLP."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILY_IDS, build_tiny

import mechscope as ms

_GRAPHS: dict = {}


def _transcoders(model, skip: bool, seed: int = 0) -> ms.TranscoderSet:
    set_ = ms.TranscoderSet.fresh(model, d_sae=24, k=3, skip_connection=skip, seed=seed)
    with torch.no_grad():
        for tc in set_:
            tc.b_dec.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed))
            if tc.W_skip is not None:
                tc.W_skip.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed + 1))
    return set_


def _built(family: str):
    if family not in _GRAPHS:
        tiny = build_tiny(family)
        model, tokens = tiny.model, tiny.tokens[:1, :9]
        transcoders = _transcoders(model, skip=family in ("llama", "gpt2", "gemma2"))
        graph = ms.attribution_graph(model, transcoders, tokens, max_logits=3, logit_prob=1.0, batch_size=16,
                                     progress=False)
        _GRAPHS[family] = (model, tokens, transcoders, graph)
    return _GRAPHS[family]


def _brute_force(model, tokens, transcoders, graph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(base values [n], values with each source removed [n_sources, n], with all removed [n])``
    of every node with a row, from forwards of the frozen replacement model (one row per removal)."""
    names = ["blocks.0.resid_pre", *(tc.cfg.hook_name for tc in transcoders),
             *(f"blocks.{l}.mlp.out" for l in transcoders.layers)]
    _, cache = model.run_with_cache(tokens, names=names)
    n_pos, d = tokens.shape[1], model.cfg.d_model
    embed = cache["blocks.0.resid_pre"][0]
    outputs, fixed = {}, {}  # per layer: what each feature writes [n_f_l, p, d]; the MLP output minus the skip
    for layer, tc in transcoders.items():
        x = cache[tc.cfg.hook_name][0]
        acts = tc.encode(x).detach()
        acts[0] = 0
        skip = x @ tc.W_skip if tc.W_skip is not None else 0
        fixed[layer] = cache[f"blocks.{layer}.mlp.out"][0] - skip
    n_sources = graph.first_logit
    removal = {layer: torch.zeros(n_sources + 2, n_pos, d) for layer in transcoders.layers}  # row 0: none, -1: all
    removal["embed"] = torch.zeros(n_sources + 2, n_pos, d)
    for i, (layer, pos, latent) in enumerate(graph.feature_index.tolist()):
        outputs = graph.activations[i] * transcoders[layer].W_dec[latent].detach()
        removal[layer][1 + i, pos] = outputs
        removal[layer][-1, pos] += outputs
    for layer in transcoders.layers:
        tc = transcoders[layer]
        x = cache[tc.cfg.hook_name][0]
        acts = tc.encode(x).detach()
        acts[0] = 0
        error = cache[f"blocks.{layer}.mlp.out"][0] - (acts @ tc.W_dec + tc.b_dec + (x @ tc.W_skip if tc.W_skip
                                                                                       is not None else 0))
        for pos in range(n_pos):
            removal[layer][1 + graph.error_node(layer, pos), pos] = error[pos].detach()
            removal[layer][-1, pos] += error[pos].detach()
    for pos in range(n_pos):
        removal["embed"][1 + graph.token_node(pos), pos] = embed[pos]
        removal["embed"][-1, pos] = embed[pos]
    live = {}

    def replace(layer):
        tc = transcoders[layer]

        def hook(x, ctx):
            skip = live[tc.cfg.hook_name] @ tc.W_skip if tc.W_skip is not None else 0
            return fixed[layer] - removal[layer] + skip
        return hook

    hooks = {"blocks.0.resid_pre": lambda x, ctx: x - removal["embed"],
             "ln_final.out": lambda x, ctx: live.setdefault("final", x),
             **{tc.cfg.hook_name: (lambda x, ctx: live.__setitem__(ctx.name, x)) for tc in transcoders},
             **{f"blocks.{l}.mlp.out": replace(l) for l in transcoders.layers}}
    with torch.no_grad(), model.linearized_at(tokens), model.hooks(hooks):
        model(tokens.expand(n_sources + 2, -1))
    values = torch.zeros(n_sources + 2, graph.n_nodes)
    for i, (layer, pos, latent) in enumerate(graph.feature_index.tolist()):
        tc = transcoders[layer]
        values[:, i] = live[tc.cfg.hook_name][:, pos] @ tc.W_enc[:, latent] + tc.b_enc[latent]
    w_u, b_u = model.weights().W_U, model.weights().b_U
    for j, token in enumerate(graph.logit_tokens.tolist()):
        u = w_u[:, token] - w_u.mean(1)
        values[:, graph.logit_node(j)] = live["final"][:, -1] @ u + b_u[token] - b_u.mean()
    return values[0], values[1:-1], values[-1]


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_every_edge_is_the_effect_of_removing_its_source(family):
    model, tokens, transcoders, graph = _built(family)
    assert graph.n_features > 0 and graph.has_row.sum() == graph.n_features + len(graph.logit_labels)
    base, removed, _ = _brute_force(model, tokens, transcoders, graph)
    reference = (base[None] - removed).T  # [target, source]
    rows = graph.has_row.nonzero()[:, 0]
    measured, expected = graph.adjacency[rows, : graph.first_logit], reference[rows]
    scale = expected.abs().max()
    assert scale > 0 and (measured - expected).abs().max() <= 1e-5 * scale + 1e-6, family
    assert int((measured != 0).sum()) > 100  # the comparison is over real edges, not zeros


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "gptj"])
def test_rows_plus_bias_are_the_values(family):
    model, tokens, transcoders, graph = _built(family)
    base, _, none_left = _brute_force(model, tokens, transcoders, graph)
    rows = graph.has_row
    torch.testing.assert_close(graph.values[rows], base[rows], rtol=1e-5, atol=1e-5)  # the clean values
    torch.testing.assert_close(graph.bias[rows], none_left[rows], rtol=1e-4, atol=1e-4)  # constants alone
    torch.testing.assert_close(graph.adjacency[rows].sum(-1) + graph.bias[rows], graph.values[rows])


def test_transcoders_that_never_fire_leave_error_nodes_and_their_dla():
    tiny = build_tiny("llama")
    model, tokens = tiny.model, tiny.tokens[:1, :9]
    transcoders = _transcoders(model, skip=False)
    with torch.no_grad():
        for tc in transcoders:
            tc.W_enc.zero_()  # topk still picks k latents: zero pre-activations, activations 0
            tc.b_enc.fill_(-1.0)
            tc.b_dec.zero_()  # else the error is the MLP output minus b_dec (a constant, in the bias)
    graph = ms.attribution_graph(model, transcoders, tokens, targets=[5, 17], progress=False)
    assert graph.n_features == 0
    last = model.cfg.n_layers - 1
    for j, token in enumerate([5, 17]):
        direction = torch.full((model.cfg.d_vocab,), -1.0 / model.cfg.d_vocab)
        direction[token] += 1
        dla = ms.direct_logit_attribution(model, tokens, direction).to_dataframe()
        mlp = dla[dla["component"] == f"L{last}.mlp"]["value"].item()
        edge = graph.adjacency[graph.logit_node(j), graph.error_node(last, tokens.shape[1] - 1)].item()
        assert edge == pytest.approx(mlp, rel=1e-4, abs=1e-5)


def test_max_features_keeps_the_most_influential_features():
    model, tokens, transcoders, full = _built("llama")
    budget = full.n_features // 3
    partial = ms.attribution_graph(model, transcoders, tokens, max_logits=3, logit_prob=1.0, batch_size=4,
                                   max_features=budget, progress=False)
    assert partial.n_features == budget and partial.n_active == full.n_active == full.n_features
    kept = [full.feature_node(*f) for f in partial.feature_index.tolist()]
    columns = kept + list(range(full.first_error, full.first_logit))
    targets = kept + list(range(full.first_logit, full.n_nodes))
    torch.testing.assert_close(partial.adjacency[partial.has_row][:, : partial.first_logit],
                               full.adjacency[targets][:, columns])  # the same edges among the kept nodes
    rows = partial.has_row
    torch.testing.assert_close(partial.adjacency[rows].sum(-1) + partial.dropped[rows] + partial.bias[rows],
                               partial.values[rows])
    assert partial.dropped[rows].abs().sum() > 0
    # the first round is chosen from the logit rows alone: the features with most direct influence on the logits
    direct = full.adjacency[full.first_logit:].abs()
    direct = (direct / direct.sum(-1, keepdim=True) * full.logit_probs[:, None]).sum(0)[: full.n_features]
    strongest = set(torch.topk(direct, 4).indices.tolist())
    assert strongest <= set(kept)


def test_bad_input_is_refused():
    model, tokens, transcoders, _ = _built("llama")
    with pytest.raises(ms.SelectionError, match="one prompt"):
        ms.attribution_graph(model, transcoders, torch.cat([tokens, tokens]), progress=False)
    partial = ms.TranscoderSet({0: transcoders[0]})
    with pytest.raises(ms.SelectionError, match="have no transcoder"):
        ms.attribution_graph(model, partial, tokens, progress=False)
    with pytest.raises(ms.SelectionError, match="direction"):
        ms.attribution_graph(model, transcoders, tokens, targets={"diff": torch.ones(3)}, progress=False)
    with pytest.raises(ms.SelectionError, match="token ids"):
        ms.attribution_graph(model, transcoders, tokens, targets=[10**6], progress=False)
    sae = ms.SAE(ms.SAEConfig(d_in=64, d_sae=8, hook_name="blocks.0.resid_post", k=2))
    with pytest.raises(ms.SelectionError, match="transcoders"):
        ms.TranscoderSet([sae])
