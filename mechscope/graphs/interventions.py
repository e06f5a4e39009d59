"""Feature interventions: set a transcoder feature's activation at a (layer, position) and run
the real model or the replacement model with it, optionally with attention frozen, and
generate with it (Lindsey et al. 2025's steering and supernode-swap experiments).

    edits = [(12, 5, 1033, 0.0), (12, 5, 87, 8.0)]           # (layer, position, latent, new activation)
    out = ms.feature_intervention(model, transcoders, prompt, edits)                     # the real model
    out = ms.feature_intervention(model, transcoders, prompt, edits, replacement=True)   # the replacement model
    out.logits, out.activations                                # [p, vocab]; [n_layers, p, d_sae]
    text = ms.generate_with_features(model, transcoders, prompt, edits, max_new_tokens=10)

The real model: each edited feature's MLP output changes by ``(new - current) * W_dec[latent]``
(current: the feature's activation in this forward, from its transcoder's live input); every
other computation is the model's own. The replacement model: every MLP output is its
transcoder's reconstruction from the live input, with the edits applied to its latents, plus
the error term of the clean prompt (a constant). ``constrained=True`` (replacement model only)
holds every other feature at its clean activation, so only direct paths carry an edit's
effect: with ``freeze_attention`` (patterns and norm scales frozen, `HookedModel.linearized_at`)
the change of a logit is then exactly the attribution graph's edge times the change of the
feature's activation over its activation. Position 0 is an error node, as in the graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from ..errors import SelectionError
from ..models.hooked import HookedModel, TokensLike
from .attribution import _one_prompt
from .transcoders import TranscoderSet

Edit = tuple[int, int, int, float]  # (layer, position, latent, new activation)


@dataclass
class InterventionOutput:
    """``logits`` `[p, d_vocab]` of the intervened forward, ``activations`` `[n_layers, p,
    d_sae]` every transcoder's latents in it (the edited ones at their set values)."""

    logits: torch.Tensor
    activations: torch.Tensor


def feature_activations(model: HookedModel, transcoders: TranscoderSet, prompt: TokensLike) -> torch.Tensor:
    """`[n_layers, p, d_sae]`: every transcoder's latents on ``prompt`` in the real model (position
    0 zeroed, as in the graphs)."""
    return feature_intervention(model, transcoders, prompt, []).activations


def feature_intervention(model: HookedModel, transcoders: TranscoderSet, prompt: TokensLike, edits: Sequence[Edit], *,
                         replacement: bool = False, freeze_attention: bool = False,
                         constrained: bool = False) -> InterventionOutput:
    """Run ``prompt`` (one) with the feature ``edits`` applied (see the module docstring)."""
    transcoders.check(model)
    tokens = _one_prompt(model, prompt)
    edits = _checked(edits, transcoders, tokens.shape[1])
    if constrained and not replacement:
        raise SelectionError("constrained=True holds the replacement model's other features fixed: pass "
                             "replacement=True as well")
    clean = _clean_state(model, transcoders, tokens) if replacement else None
    seen: dict[int, torch.Tensor] = {}
    with ExitStack() as stack, torch.no_grad():
        if freeze_attention:
            stack.enter_context(model.linearized_at(tokens))
        stack.enter_context(model.hooks(_hooks(transcoders, edits, clean, constrained, seen, tokens.shape[1])))
        logits = model(tokens)[0]
    return InterventionOutput(logits, torch.stack([seen[layer] for layer in transcoders.layers]))


def generate_with_features(model: HookedModel, transcoders: TranscoderSet, prompt: TokensLike, edits: Sequence[Edit],
                           max_new_tokens: int = 20, *, replacement: bool = False, **generate_kwargs) -> str:
    """``prompt`` continued with the ``edits`` applied at the prompt's positions (in the prompt's
    forward; the generated tokens read its edited keys and values), in the real model or the
    replacement model (the generated positions have no clean error term: their MLPs stay the
    model's own there). Returns the text, prompt included."""
    transcoders.check(model)
    tokens = _one_prompt(model, prompt)
    edits = _checked(edits, transcoders, tokens.shape[1])
    clean = _clean_state(model, transcoders, tokens) if replacement else None
    with model.hooks(_hooks(transcoders, edits, clean, False, {}, tokens.shape[1])):
        out = model.generate(tokens, max_new_tokens, return_tokens=True, **generate_kwargs)
    return model.to_string(out[0]) if model.tokenizer is not None else out[0]


def _checked(edits: Sequence[Edit], transcoders: TranscoderSet, n_pos: int) -> list[Edit]:
    checked = []
    for edit in edits:
        if len(edit) != 4:
            raise SelectionError(f"a feature edit is (layer, position, latent, value), got {edit!r}")
        layer, position, latent, value = edit
        if layer not in transcoders.layers:
            raise SelectionError(f"edit {edit!r}: no transcoder for layer {layer}")
        position = position + n_pos if position < 0 else position
        if not 0 < position < n_pos:
            raise SelectionError(f"edit {edit!r}: position must be in 1..{n_pos - 1} (position 0 has no features)")
        if not 0 <= latent < transcoders[layer].cfg.d_sae:
            raise SelectionError(f"edit {edit!r}: latent must be in 0..{transcoders[layer].cfg.d_sae - 1}")
        checked.append((int(layer), int(position), int(latent), float(value)))
    return checked


def _clean_state(model: HookedModel, transcoders: TranscoderSet, tokens: torch.Tensor) -> dict:
    """Per layer: the clean latents `[p, d_sae]` (position 0 zeroed) and error `[p, d]`."""
    names = [n for tc in transcoders for n in (tc.cfg.hook_name, tc.cfg.output_hook_name)]
    _, cache = model.run_with_cache(tokens, names=names)
    state = {}
    with torch.no_grad():
        for layer, tc in transcoders.items():
            x = cache[tc.cfg.hook_name][0].to(tc.W_enc.dtype)
            acts = tc.encode(x)
            acts[0] = 0
            state[layer] = (acts, cache[tc.cfg.output_hook_name][0].to(tc.W_dec.dtype) - tc.decode(acts, x))
    return state


def _hooks(transcoders: TranscoderSet, edits: list[Edit], clean: dict | None, constrained: bool,
           seen: dict[int, torch.Tensor], n_pos: int) -> dict:
    live: dict[int, torch.Tensor] = {}
    by_layer: dict[int, list[Edit]] = {}
    for edit in edits:
        by_layer.setdefault(edit[0], []).append(edit)

    def read(layer: int):
        def hook(x: torch.Tensor, ctx) -> None:
            live[layer] = x
        return hook

    def write(layer: int):
        tc = transcoders[layer]

        def hook(out: torch.Tensor, ctx) -> torch.Tensor | None:
            x = live.pop(layer)
            if x.shape[1] != n_pos:  # a generation step after the prompt: the model's own MLP
                return None
            x = x.to(tc.W_enc.dtype)
            acts = clean[layer][0].expand(x.shape[0], -1, -1).clone() if constrained else tc.encode(x)
            acts[:, 0] = 0
            current = acts.clone()
            for _, position, latent, value in by_layer.get(layer, ()):
                acts[:, position, latent] = value
            seen[layer] = acts[0].detach().cpu()
            if clean is None:  # the real model: the edited features' change on top of its own MLP
                change = (acts - current) @ tc.W_dec
                return out + change.to(out.dtype) if by_layer.get(layer) else None
            return (tc.decode(acts, x) + clean[layer][1]).to(out.dtype)
        return hook

    hooks = {}
    for layer, tc in transcoders.items():
        hooks[tc.cfg.hook_name] = read(layer)
        hooks[tc.cfg.output_hook_name] = write(layer)
    return hooks
