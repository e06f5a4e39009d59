"""Path patching equals a plain two-forward-per-sender implementation, and its identities."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

import mechscope as ms
from mechscope.causal.metrics import logit_diff
from mechscope.causal.patching import activation_patching
from mechscope.causal.path_patching import path_patching
from mechscope.data.tasks import PromptPairs


def _pairs(n=2, pos=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, 97, (n, pos), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2:4] = torch.randint(3, 97, (n, 2), generator=gen)
    return PromptPairs(clean, corrupted, torch.randint(3, 97, (n,), generator=gen), torch.randint(3, 97, (n,), generator=gen))


def _naive(model, pairs, receivers, receiver_input, positions, freeze_mlps, direction="noise"):
    """Wang et al.'s recipe, one sender at a time, two full forwards each. Noising runs the
    clean prompts with the sender from the corrupted run; denoising the other way round."""
    cfg = model.cfg
    run_tokens = pairs.clean if direction == "noise" else pairs.corrupted
    _, clean = model.run_with_cache(run_tokens)  # the run every other head is frozen at
    _, corrupted = model.run_with_cache(pairs.corrupted if direction == "noise" else pairs.clean)  # the sender's source
    out = torch.empty(cfg.n_layers, cfg.n_heads, len(pairs))
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            def freeze(x, ctx, layer=layer, head=head):
                x = clean[ctx.name].clone()
                if ctx.layer == layer:
                    x[:, :, head] = corrupted[ctx.name][:, :, head]
                return x

            hooks = {"blocks.*.attn.z": freeze}
            if freeze_mlps:
                hooks["blocks.*.mlp.out"] = lambda x, ctx: clean[ctx.name]
            with torch.no_grad(), model.hooks(hooks):
                logits, patched = model.run_with_cache(run_tokens, f"blocks.*.attn.{receiver_input}")
            if receivers is not None:
                def insert(x, ctx, patched=patched):
                    x = x.clone()
                    for r_layer, r_head in receivers:
                        if ctx.layer == r_layer:
                            where = (slice(None), slice(None) if positions is None else positions, r_head)
                            x[where] = patched[ctx.name][where]
                    return x

                with torch.no_grad(), model.hooks({f"blocks.*.attn.{receiver_input}": insert}):
                    logits = model(run_tokens)
            out[layer, head] = logit_diff(logits, pairs)
    return out


@pytest.mark.parametrize("receivers,receiver_input,positions,freeze_mlps,direction", [
    (None, "q", None, False, "noise"), (None, "q", None, True, "noise"), ([(1, 0), (1, 3)], "q", None, False, "noise"),
    ([(1, 1)], "k", [5, 7], False, "noise"), ([(1, 0)], "v", None, True, "noise"), (None, "q", None, True, "denoise"),
    ([(1, 0), (1, 2)], "q", [6, 7], False, "denoise")])
def test_path_patching_equals_naive_recipe(tiny, receivers, receiver_input, positions, freeze_mlps, direction):
    model = tiny.model
    pairs = _pairs()
    result = path_patching(model, pairs, receivers, receiver_input=receiver_input, receiver_positions=positions,
                           freeze_mlps=freeze_mlps, direction=direction, max_rows=6)
    naive = _naive(model, pairs, receivers, receiver_input, positions, freeze_mlps, direction)
    torch.testing.assert_close(result.raw, naive, atol=1e-5, rtol=1e-5)


def test_last_layer_heads_to_logits_equal_activation_patching():
    # In the last layer no other head can carry a sender's effect: path = activation patching (noising).
    model = build_tiny("llama").model
    pairs = _pairs(seed=1)
    path = path_patching(model, pairs)
    act = activation_patching(model, pairs, "heads", direction="noise")
    torch.testing.assert_close(path.raw[-1], act.raw[-1], atol=1e-5, rtol=1e-5)
    # Receivers in layer 1 cannot be reached from layer 1: those senders have no effect.
    to_q = path_patching(model, pairs, [(1, 2)])
    torch.testing.assert_close(to_q.raw[1], to_q.clean_metric.expand(model.cfg.n_heads, -1))


def test_bad_receivers():
    model = build_tiny("llama").model
    pairs = _pairs()
    with pytest.raises(ms.SelectionError, match="receiver_input"):
        path_patching(model, pairs, [(1, 0)], receiver_input="z")
    with pytest.raises(ms.SelectionError, match="out of range"):
        path_patching(model, pairs, [(1, 2)], receiver_input="k")  # 2 key/value heads
    with pytest.raises(ms.SelectionError, match="no receivers"):
        path_patching(model, pairs, [])
