"""Ablations: replace any named activation, or some of its heads and positions, by zeros,
its mean over a reference dataset, or its value on a randomly chosen reference prompt.

    hooks = ablation_hooks(model, ms.at("blocks.2.attn.z", heads=[3, 5], positions=slice(4, 7)))
    with model.hooks(hooks):
        logits = model(tokens)

    # mean over a reference dataset, per position (reference prompts as long as the run's)
    with model.hooks(ablation_hooks(model, "blocks.*.attn.z", "mean", reference=ref_tokens)):
        ...

    # resample ablation, the run as its own reference, each row taking another row's values
    logits = ablate(model, tokens, "blocks.5.mlp.out", "resample", reference=tokens, exclude_same_row=True)

Kinds:

- ``"zero"``: the selected cells become 0.
- ``"mean"``: the selected cells become the reference dataset's mean of that activation.
  With ``per_position=True`` (default) the mean is over reference prompts only, one value
  per position: the run must have the reference's length. With ``per_position=False`` it is
  over prompts and positions, so runs of any length can be ablated. Means are accumulated in
  float64 and stored in the activation's dtype.
- ``"resample"``: row ``i`` of the run takes its values from reference row ``rows[i]``, with
  ``rows = resample_rows(batch, n_reference, seed=seed, exclude_same_row=...)``: the same
  reference row for every ablated activation of that run row, and the same rows at every
  forward of the same batch size (deterministic given ``seed``). When the reference *is* the run, the
  usual convention is ``exclude_same_row=True`` (row ``i`` never takes row ``i``'s own values,
  which would ablate nothing). The run must have the reference's length.

Selections follow `mechscope.at`: ``heads`` index the head axis (key/value heads for
``attn.k``/``attn.v`` under GQA), ``positions`` the position axis (the query axis of
``attn.scores``/``attn.pattern``); an int, list, slice or ``ms.PerPrompt``. The reference is
read at exactly the same cells as the run, so ``positions=-1`` is the last position of both.

Reference activations are recorded in one forward of the reference prompts when the hooks
are built (with whatever hooks are active at that moment), or taken from an
`ActivationCache` you already have, which lets many ablations share one reference run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..errors import SelectionError
from ..models.cache import ActivationCache
from ..models.hook_points import HookPoint, select_names
from ..models.hooked import HookedModel, Target, TokensLike
from ..models.runtime import HookContext, HookFn
from ..models.selection import Heads, PerPrompt, Positions, index_for

AblationKind = Literal["zero", "mean", "resample"]
KINDS: tuple[str, ...] = ("zero", "mean", "resample")
TargetSpec = str | Target | Sequence[str | Target]
Reference = torch.Tensor | ActivationCache

_Selection = tuple[Heads, Positions]


def resample_rows(n_rows: int, n_reference: int, *, seed: int = 0, exclude_same_row: bool = False) -> torch.Tensor:
    """The reference row each run row takes its values from under resample ablation.

    Returns LongTensor `[n_rows]` of indices into the reference, drawn uniformly with
    replacement from a generator seeded with ``seed`` (so the same arguments always give the
    same rows). With ``exclude_same_row`` (for a reference that is the run itself; needs
    ``n_rows == n_reference >= 2``) row ``i`` is drawn uniformly from the other rows.
    """
    if n_rows < 1 or n_reference < 1:
        raise SelectionError(f"resampling needs at least one run row and one reference row, got {n_rows} and "
                             f"{n_reference}")
    generator = torch.Generator().manual_seed(seed)
    if not exclude_same_row:
        return torch.randint(n_reference, (n_rows,), generator=generator)
    if n_rows != n_reference:
        raise SelectionError(
            f"exclude_same_row is for a reference that is the run itself, but the run has {n_rows} rows and the "
            f"reference {n_reference}; pass the run's own tokens as reference, or exclude_same_row=False"
        )
    if n_reference < 2:
        raise SelectionError("exclude_same_row needs a reference of at least 2 rows (one row has no other row)")
    draw = torch.randint(n_reference - 1, (n_rows,), generator=generator)
    return draw + (draw >= torch.arange(n_rows)).long()  # skip row i itself: uniform over the others


def ablation_hooks(
    model: HookedModel,
    targets: TargetSpec,
    kind: AblationKind = "zero",
    reference: Reference | None = None,
    *,
    per_position: bool = True,
    seed: int = 0,
    exclude_same_row: bool = False,
) -> dict[str, HookFn]:
    """Forward hooks that ablate ``targets``; use as ``with model.hooks(ablation_hooks(...)):``.

    targets: an activation name, a glob (``"blocks.*.attn.z"``), an ``ms.at(name, heads=...,
      positions=...)`` target (its glob, heads and positions respected), or a list of those.
    kind: ``"zero"``, ``"mean"`` or ``"resample"`` (see the module docstring).
    reference: for mean and resample, token ids `[n_ref, ref_pos]` (or `[ref_pos]`) of the
      reference prompts, run once here; or an `ActivationCache` of them holding every
      targeted name at all positions (e.g. ``model.run_with_cache(ref, "blocks.*.attn.z")[1]``).
      Ignored for zero.
    per_position: mean only. True: mean over reference prompts, `[ref_pos, ...]`, and the run
      must be ``ref_pos`` long. False: mean over prompts and positions, any run length (not
      offered for ``attn.scores``/``attn.pattern``, whose key axis is positional too).
    seed, exclude_same_row: resample only, see `resample_rows`.

    Returns ``{exact activation name: hook}`` in execution order; a name targeted several
    times (e.g. different heads at different positions) gets one hook applying each
    selection. The hooks return new tensors (nothing is edited in place) and raise
    `SelectionError` when a run does not fit the reference (length, positions, heads).
    """
    if kind not in KINDS:
        raise SelectionError(f"unknown ablation kind {kind!r}; choose from {', '.join(KINDS)}")
    selections = _resolve(model, targets)
    if kind != "zero" and reference is None:
        raise SelectionError(
            f"{kind} ablation needs reference=: token ids [n_prompts, pos] of the reference dataset "
            "(e.g. the run's own tokens) or an ActivationCache of them"
        )
    if kind != "resample" and exclude_same_row:
        raise SelectionError("exclude_same_row applies to resample ablation only")
    if kind == "mean" and not per_position:
        positional = [n for n in selections if model.hook_point(n).explicit_attention]
        if positional:
            raise SelectionError(
                f"per_position=False is not defined for {positional[0]!r}: its key axis is positional as well; "
                "use per_position=True (mean over prompts only)"
            )
    if kind == "zero":
        sources = None
    else:
        acts = _reference_activations(model, reference, list(selections))
        for name, sels in selections.items():
            _check_reference_cells(model.hook_point(name), acts[name], sels, kind, per_position)
        if kind == "mean":
            sources = {name: _mean(acts[name], model.hook_point(name).pos_dim, per_position) for name in acts}
        else:
            sources = acts
    rows_by_batch: dict[int, torch.Tensor] = {}

    def rows_for(batch: int, device: torch.device) -> torch.Tensor:
        if batch not in rows_by_batch:
            n_ref = next(iter(sources.values())).shape[0]
            rows_by_batch[batch] = resample_rows(batch, n_ref, seed=seed, exclude_same_row=exclude_same_row)
        return rows_by_batch[batch].to(device)

    def replacement(x: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        """A tensor broadcastable to ``x`` holding the ablated values of every cell."""
        if kind == "zero":
            return x.new_zeros(())
        source = sources[ctx.name]
        if kind == "mean" and not per_position:
            return source.to(x.device, x.dtype)
        if source.shape[1:] != x.shape[1:]:
            raise SelectionError(
                f"{kind} ablation of {ctx.name!r}: the reference was recorded with shape "
                f"{tuple(source.shape[1:])} per prompt, but this run's activation has {tuple(x.shape[1:])} "
                f"(run and reference prompts must have the same length"
                + ("; pass per_position=False to average over positions as well)" if kind == "mean" else ")")
            )
        if kind == "mean":
            return source.to(x.device, x.dtype)
        return source[rows_for(x.shape[0], source.device)].to(x.device, x.dtype)

    def make_hook(sels: list[_Selection]) -> HookFn:
        def hook(x: torch.Tensor, ctx: HookContext) -> torch.Tensor:
            values = replacement(x, ctx)
            for heads, positions in sels:
                index = index_for(x.shape, ctx.point.pos_dim, ctx.point.head_dim, heads, positions, x.device)
                if index is None:
                    x = values.expand(x.shape).clone()
                else:
                    x = x.index_put(index, values.expand(x.shape)[index])
            return x

        return hook

    return {name: make_hook(sels) for name, sels in selections.items()}


def ablate(
    model: HookedModel,
    tokens: TokensLike,
    targets: TargetSpec,
    kind: AblationKind = "zero",
    reference: Reference | None = None,
    *,
    per_position: bool = True,
    seed: int = 0,
    exclude_same_row: bool = False,
    **forward_kwargs,
) -> torch.Tensor:
    """Logits `[batch, pos, d_vocab]` of ``tokens`` with ``targets`` ablated.

    Same arguments as `ablation_hooks`; ``forward_kwargs`` (``attention_mask``,
    ``prepend_bos``...) go to the model's forward. For the run as its own reference pass
    ``reference=tokens`` (with ``exclude_same_row=True`` for resampling).
    """
    hooks = ablation_hooks(model, targets, kind, reference, per_position=per_position, seed=seed,
                           exclude_same_row=exclude_same_row)
    return model.run_with_hooks(tokens, hooks, **forward_kwargs)


# ---------------------------------------------------------------------------- helpers
def _resolve(model: HookedModel, targets: TargetSpec) -> dict[str, list[_Selection]]:
    """``{exact name: [(heads, positions), ...]}`` in execution order, selections validated
    against what is known before a run (the head axis)."""
    items = [targets] if isinstance(targets, (str, Target)) else targets
    if not isinstance(items, Sequence):
        raise SelectionError(
            f"targets must be a name, a glob, an ms.at(...) target or a list of those, got {type(targets).__name__}"
        )
    items = list(items)
    if not items:
        raise SelectionError("no targets to ablate: give a name, a glob, an ms.at(...) target or a list of those")
    found: dict[str, list[_Selection]] = {}
    whole: set[str] = set()
    for item in items:
        if isinstance(item, str):
            target = Target(item)
        elif isinstance(item, Target):
            target = item
        else:
            raise SelectionError(f"a target must be a name, a glob or ms.at(...), got {type(item).__name__}")
        for name in select_names(target.name, model.names):
            point = model.hook_point(name)
            if target.heads is not None:
                _check_heads(model, point, target.heads)
            if target.heads is None and target.positions is None:
                whole.add(name)  # the whole activation: other selections of it add nothing
            found.setdefault(name, []).append((target.heads, target.positions))
    return {name: [(None, None)] if name in whole else found[name] for name in model.names if name in found}


def _check_heads(model: HookedModel, point: HookPoint, heads: Heads) -> None:
    if point.head_dim is None:
        raise SelectionError(
            f"heads={heads!r} given for {point.name!r}, which has no head axis (layout {point.layout!r}); "
            "per-head activations are blocks.{l}.attn.q/k/v/scores/pattern/z/head_out"
        )
    n_heads = model.cfg.n_kv_heads if point.suffix in ("attn.k", "attn.v") else model.cfg.n_heads
    shape = [1] * len(point.layout)
    shape[point.head_dim] = n_heads
    try:
        index_for(torch.Size(shape), point.pos_dim, point.head_dim, heads, None, torch.device("cpu"))
    except SelectionError as error:
        raise SelectionError(f"{point.name!r} has {n_heads} heads: {error}") from None


def _reference_activations(model: HookedModel, reference: Reference, names: list[str]) -> dict[str, torch.Tensor]:
    """Full reference activations `[n_ref, ...]` of ``names``, from a cache or one forward."""
    if isinstance(reference, ActivationCache):
        cached = set(reference)  # (`in` would raise for valid names that were not cached)
        missing = [n for n in names if n not in cached]
        if missing:
            raise SelectionError(
                f"the reference cache lacks {len(missing)} targeted activation(s), e.g. {missing[0]!r}; "
                "record them with model.run_with_cache(reference_tokens, names=...)"
            )
        acts = {n: reference[n] for n in names}
    else:
        if not isinstance(reference, torch.Tensor):
            raise SelectionError(
                f"reference must be token ids [n_prompts, pos] or an ActivationCache, got {type(reference).__name__}"
            )
        if reference.dtype.is_floating_point or reference.dtype.is_complex or reference.dtype == torch.bool:
            raise SelectionError(f"reference must hold integer token ids, got dtype {reference.dtype}")
        if reference.ndim == 1:
            reference = reference[None]
        if reference.ndim != 2 or reference.numel() == 0:
            raise SelectionError(f"reference must be non-empty token ids [n_prompts, pos], got shape "
                                 f"{tuple(reference.shape)}")
        _, cache = model.run_with_cache(reference, names)
        acts = {n: cache[n] for n in names}
    for name, act in acts.items():
        if act.ndim != len(model.hook_point(name).layout) or act.shape[0] == 0:
            raise SelectionError(f"reference activation {name!r} has shape {tuple(act.shape)}; expected a non-empty "
                                 f"[{', '.join(model.hook_point(name).layout)}] tensor")
    return acts


def _check_reference_cells(point: HookPoint, act: torch.Tensor, sels: list[_Selection], kind: str,
                           per_position: bool) -> None:
    """Positions of a selection must exist in the reference when the reference is read per position."""
    if kind == "mean" and not per_position:
        return
    for heads, positions in sels:
        if positions is None or isinstance(positions, PerPrompt) or positions == "last":  # checked in the run
            continue
        try:
            index_for(act.shape, point.pos_dim, point.head_dim, heads, positions, torch.device("cpu"))
        except SelectionError as error:
            raise SelectionError(
                f"{kind} ablation of {point.name!r}: reference prompts have {act.shape[point.pos_dim]} positions: "
                f"{error}"
            ) from None


def _mean(act: torch.Tensor, pos_dim: int, per_position: bool) -> torch.Tensor:
    """Mean over prompts `[ref_pos, ...]`-like `[1, ...]`, or also over positions (`[1, 1, ...]`);
    accumulated in float64 (float32 on MPS), returned in the activation's dtype."""
    wide = torch.float32 if act.device.type == "mps" else torch.float64
    dims = (0,) if per_position else (0, pos_dim)
    return act.to(wide).mean(dim=dims, keepdim=True).to(act.dtype)


__all__ = ["KINDS", "AblationKind", "ablate", "ablation_hooks", "resample_rows"]
