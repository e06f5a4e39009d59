"""Shared builders for the circuit tests: prompt pairs on tiny models, a model linear in its
residual stream, and the plain two-forward recipe for single-edge patching (ordinary hooks)."""

from __future__ import annotations

import copy

import torch
import transformers as tf

import mechscope as ms
from mechscope.circuits import Graph
from mechscope.data.tasks import PromptPairs


def pairs_for(tokens: torch.Tensor, seed: int = 5, answer_positions=None) -> PromptPairs:
    """Clean ``tokens`` `[n, pos]`; corrupted: three middle positions redrawn."""
    gen = torch.Generator().manual_seed(seed)
    n = tokens.shape[0]
    corrupted = tokens.clone()
    corrupted[:, 3:6] = torch.randint(3, 97, (n, 3), generator=gen)
    return PromptPairs(tokens, corrupted, torch.randint(3, 97, (n,), generator=gen),
                       torch.randint(3, 97, (n,), generator=gen), answer_positions)


def linear_model(seed: int = 0) -> ms.HookedModel:
    """A GPT-2-shaped model that is affine in its residual stream: identity MLP activation,
    zero query/key weights (uniform causal attention, a constant pattern), and LayerNorms whose
    eps (1e12) swamps the variance in fp32, so they only centre and scale (weights 1e6 undo
    the 1/sqrt(eps)). Every logit is then an affine function of every destination's input."""
    config = tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=32,
                           activation_function="linear", layer_norm_epsilon=1e12)
    torch.manual_seed(seed)
    hf = tf.GPT2LMHeadModel(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim > 1 else 0.1))
            if "ln" in name and name.endswith("weight"):
                p.copy_(1e6 * (1 + 0.1 * torch.randn(p.shape, generator=gen)))
        for block in hf.transformer.h:
            block.attn.c_attn.weight[:, : 2 * 32] = 0
            block.attn.c_attn.bias[: 2 * 32] = 0
    return ms.HookedModel(copy.deepcopy(hf))


def two_forward_edge_patch(model, graph: Graph, pairs: PromptPairs, src: int, dst: int, metric,
                           scale: float = 1.0, where: torch.Tensor | None = None) -> torch.Tensor:
    """metric `[n]` of the clean run with edge src -> dst patched, the textbook way: record the
    source's output in the clean and the corrupted run, then rerun the clean prompts adding
    ``scale * (corrupted - clean)`` of that source to that destination's input alone (at the
    positions ``where`` `[n, pos]` only, when given)."""
    s, d = graph.sources[src], graph.destinations[dst]
    with torch.no_grad():
        _, clean = model.run_with_cache(pairs.clean, s.hook)
        _, corrupted = model.run_with_cache(pairs.corrupted, s.hook)
    a, b = clean[s.hook], corrupted[s.hook]
    if s.head is not None:
        a, b = a[:, :, s.head], b[:, :, s.head]
    shift = scale * (b - a)
    if where is not None:
        shift = shift * where[:, :, None].to(shift.dtype)
    key = d.hook if d.head is None else ms.at(d.hook, heads=d.head)
    with torch.no_grad(), model.hooks({key: lambda x, ctx: x + shift}):
        return metric(model(pairs.clean), pairs)
