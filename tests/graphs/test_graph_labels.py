"""Feature contexts and labels against brute force: the strongest (window, position) of each
feature over a corpus equal a full sort of every activation; a label names the strongest
context's token and the tokens the decoder promotes most (final-norm weight folded into W_U)."""

from __future__ import annotations

import torch
from conftest import build_tiny

import mechscope as ms
from mechscope.graphs.labels import top_contexts


def test_top_contexts_and_labels_are_brute_force():
    tiny = build_tiny("llama")
    model = tiny.model
    windows = torch.randint(3, 97, (20, 10), generator=torch.Generator().manual_seed(7))
    transcoders = ms.TranscoderSet.fresh(model, d_sae=24, k=3, seed=0)
    features = [(0, 1), (1, 5), (1, 17)]
    found = top_contexts(model, transcoders, windows, features, n_top=4, batch_size=6)
    for layer, latent in features:
        tc = transcoders[layer]
        _, cache = model.run_with_cache(windows, tc.cfg.hook_name)
        acts = tc.encode(cache[tc.cfg.hook_name]).detach()[..., latent]
        acts[:, 0] = 0  # position 0 never counts
        values, where = acts.flatten().topk(4)
        got = found[(layer, latent)]
        torch.testing.assert_close(got.values, values[values > 0])
        assert (got.windows * windows.shape[1] + got.positions).tolist() == where[values > 0].tolist()
    labels = ms.feature_labels(model, transcoders, windows, features, n_top=4, n_promoted=2)
    w_u = model.weights(fold_norm=True).W_U.detach()
    for layer, latent in features:
        got = found[(layer, latent)]
        peak = str(int(windows[got.windows[0], got.positions[0]]))
        promoted = (transcoders[layer].W_dec[latent].detach() @ w_u).topk(2).indices.tolist()
        label = labels[(layer, latent)]
        assert f"'{peak}'" in label.split("|")[0] and label.endswith(f"promotes '{promoted[0]}', '{promoted[1]}'")
