"""Path patching (Wang et al. 2022): the effect of sender heads on receivers through direct paths.

For each sender head: run the prompts with the sender's output taken from the source
(e.g. corrupted) prompts and every other head frozen at its value in the run, so the
sender's change reaches later components only through the residual stream (MLPs are
recomputed unless ``freeze_mlps``). Then either read the metric from that run (receivers =
the logits), or record the receivers' inputs (their q, k or v) and run the prompts again
with only those inputs replaced. Each sender is one variant; variants are stacked along the
batch axis and start at the sender's layer, as in `activation_patching`.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from ..data.tasks import PromptPairs
from ..errors import SelectionError
from ..models.cache import recorder
from ..models.hooked import HookedModel
from .cells import cell_grid, write_cells
from .metrics import checked_metric, logit_diff
from .patching import Metric, run_and_source
from .result import PatchingResult
from .sweep import Stack, VariantSweep, resid_names, tile


def path_patching(model: HookedModel, pairs: PromptPairs, receivers: Sequence[tuple[int, int]] | None = None, *,
                  receiver_input: str = "q", receiver_positions: Sequence[int] | None = None,
                  metric: Metric = logit_diff, direction: str = "noise", freeze_mlps: bool = False,
                  max_rows: int = 256) -> PatchingResult:
    """Path-patch every head (as sender) to ``receivers``.

    receivers: ``(layer, head)`` pairs whose ``receiver_input`` ("q", "k" or "v"; k/v heads
      index key/value heads) receives the senders' effect, or None for the logits.
    receiver_positions: positions where the receivers' inputs are replaced (default all).
    direction: "noise" (run clean, senders from corrupted; Wang et al.) or "denoise".
    Returns a `PatchingResult` with ``raw`` `[n_layers, n_heads, n_prompts]` (senders that
    cannot reach a receiver get the run's metric).
    """
    metric = checked_metric(metric)
    run_tokens, source_tokens = run_and_source(pairs, direction, model)
    n, n_layers = len(pairs), model.cfg.n_layers
    grid = cell_grid(model, "heads", pairs.clean.shape[1], per_position=False)
    input_names = _receiver_names(model, receivers, receiver_input, receiver_positions, pairs.clean.shape[1])
    z = [grid.name(l) for l in range(n_layers)]
    mlp = [f"blocks.{l}.mlp.out" for l in range(n_layers)] if freeze_mlps else []
    with torch.no_grad():
        source_logits, source = model.run_with_cache(source_tokens, z)
        run_logits, run = model.run_with_cache(run_tokens, z + mlp + resid_names(range(n_layers)))
        run_metric = metric(run_logits, pairs).float().cpu()
        source_metric = metric(source_logits, pairs).float().cpu()
        raw = run_metric.expand(*grid.shape, n).clone()  # senders with no receiver downstream keep it
        senders = [cell for cell in grid.cells() if not input_names or cell[0] < max(r[0] for r in receivers)]
        sweep = VariantSweep(model, run_tokens, run, max_rows=max_rows)

        def forward(stack: Stack) -> torch.Tensor:
            recorded: dict[str, torch.Tensor] = {}
            hooks = _frozen_heads(model, grid, stack.variants, run, source, z[stack.layer:], mlp[stack.layer:])
            hooks.update({name: recorder(recorded, clone=True) for name in input_names})
            logits = sweep.run(stack, hooks)
            if not input_names:
                return logits
            hooks = _receiver_inputs(receivers, receiver_input, receiver_positions, recorded)
            return sweep.run(stack, hooks, layer=min(r[0] for r in receivers))

        values = sweep.evaluate(senders, start_of=lambda cell: cell[0], forward=forward,
                                readout=lambda logits, stack: metric(logits, pairs.tile(len(stack))))
        for cell, value in zip(senders, values):
            raw[cell] = value
    clean_metric, corrupted_metric = (run_metric, source_metric) if direction == "noise" else (source_metric, run_metric)
    component = "logits" if receivers is None else f"{receiver_input} of " + ", ".join(f"L{l}H{h}" for l, h in receivers)
    return PatchingResult(component, direction, raw, clean_metric, corrupted_metric, grid.axes, method="path")


def _frozen_heads(model: HookedModel, grid, chunk, run, source, z_names: list[str], mlp_names: list[str]) -> dict:
    """Hooks holding every head's z (and MLP output, if given) at its value in the run, except
    each variant's sender head, which takes its value from the source run."""
    k = len(chunk)
    sender = z_names[0]
    point = model.hook_point(sender)
    hooks = {name: (lambda x, ctx: tile(run[ctx.name], k)) for name in z_names[1:] + mlp_names}
    hooks[sender] = lambda x, ctx: write_cells(tile(run[sender], k), grid, point, chunk, source[sender])
    return hooks


def _receiver_names(model: HookedModel, receivers, receiver_input: str, positions, n_pos: int) -> list[str]:
    if receivers is None:
        return []
    if positions is not None and not all(_is_int(p) for p in positions):
        raise SelectionError(f"receiver positions must be ints, got {list(positions)!r}")
    if positions is not None and not all(-n_pos <= p < n_pos for p in positions):
        raise SelectionError(f"receiver positions {list(positions)} out of range for prompts of {n_pos} tokens")
    if receiver_input not in ("q", "k", "v"):
        raise SelectionError(f"receiver_input must be 'q', 'k' or 'v', got {receiver_input!r}")
    if not receivers:
        raise SelectionError("no receivers given (pass None to measure the effect on the logits)")
    n_heads = model.cfg.n_heads if receiver_input == "q" else model.cfg.n_kv_heads
    for layer, head in receivers:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < n_heads):
            raise SelectionError(f"receiver L{layer}H{head} out of range ({model.cfg.n_layers} layers, "
                                 f"{n_heads} {'query' if receiver_input == 'q' else 'key/value'} heads)")
    return sorted({f"blocks.{layer}.attn.{receiver_input}" for layer, _ in receivers})


def _is_int(value: object) -> bool:
    """An int-like index (int, numpy or 0-d integer tensor), not a bool or a float."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _receiver_inputs(receivers, receiver_input: str, positions, recorded: dict[str, torch.Tensor]) -> dict:
    """Hooks replacing the receivers' inputs (their heads, at ``positions``) by ``recorded``."""
    by_name: dict[str, list[int]] = {}
    for layer, head in receivers:
        by_name.setdefault(f"blocks.{layer}.attn.{receiver_input}", []).append(head)
    pos = slice(None) if positions is None else torch.as_tensor(list(positions))

    def replace(x: torch.Tensor, ctx) -> torch.Tensor:
        x = x.clone()
        for head in by_name[ctx.name]:
            x[:, pos, head] = recorded[ctx.name][:, pos, head]
        return x

    return dict.fromkeys(by_name, replace)
