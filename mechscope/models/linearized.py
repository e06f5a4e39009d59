"""The model frozen at one prompt: attention patterns and norm scales held at the values a
recorded forward had, so that everything else is affine in the residual stream.

    with model.linearized_at(tokens):            # records one forward of tokens [b, p]
        logits = model(tokens)                   # == the recording (bit for bit)
        logits = model(tokens.expand(8, -1))     # 8 copies of a 1-prompt recording
        # every hook, cache and gradient works as usual; attention mixes with the recorded
        # patterns and every norm (ln1, ln2, sandwich norms, the final norm) applies the
        # recorded 1/rms (1/std) scale, so d(anything)/d(residual) is the linear path only

This is the frozen model of attribution graphs (Ameisen et al. 2025) and of direct-effect
computations: with MLP outputs also held fixed (or replaced by something linear), a forward is
an affine function of any additive intervention on the residual, and one backward gives its
exact linear coefficients.

A frozen norm computes ``out0 + L(x - x0)``: ``x0``/``out0`` its input and output in the
recorded forward (its first call there: a norm that runs twice per forward, as GPT-J's shared
pre-norm does for a rewired MLP input, runs on the same residual both times; per-head copies of
the input, `[b, p, h, d]`, are linearised at the same point),
``L`` the norm linearised at ``x0`` (`norms.FrozenNorm`: centring, then the recorded scale times
the weight). At the recorded input that is ``out0`` exactly, and its gradient is ``L``. A
frozen pattern is the recorded ``attn.pattern`` (so the run takes the explicit-attention path,
as the recording did); q and k then get no gradient. Norms inside attention (q/k norms) only
shape the pattern, so they need no freezing.

Not frozen: the per-head copies of split inputs (``attn.q_input`` / ``k_input`` / ``v_input``,
and GPT-J's rewired ``mlp.in``) recompute their pre-norm with its live scale and take its
true Jacobian in the backward; read ``attn.v`` (or ``ln1.out``) instead inside this context.

A recording of one prompt serves a batch of any size (each row is compared with it); a
recording of b prompts serves exactly those b rows. The positions must match.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import SelectionError
from .norms import FrozenNorm

if TYPE_CHECKING:
    from .hooked import HookedModel, TokensLike


def norm_module_paths(model: HookedModel) -> list[str]:
    """Absolute paths of every norm on the residual stream's way: each block's ln1, ln2 and
    sandwich norms (those the family has), then the final norm."""
    parts = model.adapter.components
    paths = [f"{model.adapter.layers}.{layer}.{path}" for layer in range(model.cfg.n_layers)
             for path in (parts.ln1, parts.ln2, parts.post_attn_norm, parts.post_mlp_norm) if path is not None]
    return [*paths, parts.ln_final]


class _Recording:
    """Per forward: each norm module's calls ``(input, output)`` in call order, each layer's pattern."""

    def __init__(self) -> None:
        self.norm_calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        self.patterns: dict[int, torch.Tensor] = {}


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _fits(recorded: torch.Tensor, x: torch.Tensor, what: str) -> None:
    """A `SelectionError` unless ``x`` is shaped like ``recorded``, or like it with a batch of
    any size when ``recorded`` has a batch of 1."""
    same = x.shape[1:] == recorded.shape[1:] and recorded.shape[0] in (1, x.shape[0])
    if not same:
        raise SelectionError(
            f"{what}: this forward has shape {tuple(x.shape)} but the model was linearised at a prompt giving "
            f"{tuple(recorded.shape)}; run the tokens linearized_at recorded (a 1-prompt recording serves any "
            "batch of that prompt)")


@contextmanager
def linearized_at(model: HookedModel, tokens: TokensLike, *, attention: bool = True, norms: bool = True,
                  attention_mask: torch.Tensor | None = None) -> Iterator[HookedModel]:
    """`HookedModel.linearized_at`: record one forward of ``tokens``, then freeze the patterns
    (``attention``) and norm scales (``norms``) at it for the ``with`` block."""
    if not (attention or norms):
        raise SelectionError("linearized_at with attention=False and norms=False freezes nothing")
    hf = model.hf
    modules = {path: hf.get_submodule(path) for path in norm_module_paths(model)} if norms else {}
    recording = _Recording()

    def record_norm(path: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            recording.norm_calls[path].append((_first_input(args, kwargs).detach().clone(), output.detach().clone()))
        return hook

    def record_pattern(pattern: torch.Tensor, ctx) -> None:
        recording.patterns[ctx.layer] = pattern.detach().clone()

    with ExitStack() as stack:
        for path, module in modules.items():
            stack.callback(module.register_forward_hook(record_norm(path), with_kwargs=True, prepend=True).remove)
        pattern_hooks = {"blocks.*.attn.pattern": record_pattern} if attention else {}
        with torch.no_grad(), model.hooks(pattern_hooks):
            model(tokens, attention_mask)
    if norms:
        missing = [path for path in modules if not recording.norm_calls.get(path)]
        if missing:
            raise SelectionError(f"norm modules {missing} did not run in the recorded forward")
    frozen = {path: (calls[0][0], calls[0][1], FrozenNorm(modules[path], model.adapter.norm, calls[0][0]))
              for path, calls in recording.norm_calls.items()}

    def frozen_norm(path: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
            x0, out0, linear = frozen[path]
            x = _first_input(args, kwargs)
            per_head = x.ndim == x0.ndim + 1  # per-head copies [b, p, h, d] of the input (split q/k/v inputs)
            if per_head:
                x0, out0 = x0.unsqueeze(-2), out0.unsqueeze(-2)
            _fits(x0, x, f"norm {path!r}")
            return (out0 + linear.apply(x - x0, head_axis=per_head).to(out0.dtype)).to(output.dtype)
        return hook

    def frozen_pattern(pattern: torch.Tensor, ctx) -> torch.Tensor:
        recorded = recording.patterns[ctx.layer]
        _fits(recorded, pattern, ctx.name)
        return recorded.to(pattern.dtype).expand_as(pattern)

    with ExitStack() as stack:
        if norms:
            for path, module in modules.items():
                stack.callback(module.register_forward_hook(frozen_norm(path), with_kwargs=True, prepend=True).remove)
        if attention:
            stack.enter_context(model.hooks({"blocks.*.attn.pattern": frozen_pattern}))
        yield model
