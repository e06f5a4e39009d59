"""Splicing SAEs and transcoders into a model's forward pass.

    with model.saes(sae, keep_error=True):           # attached: new names, usable by caches and hooks
        logits, cache = model.run_with_cache(tokens, names="blocks.15.resid_post.sae.latents")
        logits = model.run_with_hooks(tokens, {"blocks.15.resid_post.sae.latents": clamp_latent_7})
    with model.hooks(splice_hooks(sae)):             # plain hooks: the activation replaced by its reconstruction
        logits = model(tokens)

While attached, an SAE reading ``<name>`` adds four names, fired inside ``<name>``'s hook:
``<name>.sae.input`` `[b, p, d_in]` (what it reads), ``<name>.sae.latents`` `[b, p, d_sae]`,
``<name>.sae.recon`` `[b, p, d_output]` (decoded from the latents as the hooks left them) and,
with ``keep_error=True``, ``<name>.sae.error`` `[b, p, d_output]` (target minus the reconstruction
of the unedited latents). What is written back is ``recon`` (+ ``error``), so with the error term
and no edit the forward is unchanged, and an edit of the latents changes exactly what they carry.
A transcoder reads ``cfg.hook_name`` and writes ``cfg.output_hook_name``; its names are still
keyed by ``cfg.hook_name``. Both are exact activation names (`check_sae_names`). An SAE on a
per-head activation (``attn.z`` `[b, p, h, d_head]`) reads the heads flattened, ``d_in = h *
d_head``, as they are harvested (`data.harvest.token_width`), and writes back in the heads' shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..data.harvest import massive_tokens, token_width
from ..errors import SelectionError
from ..models.extension import Fire, NewPoint
from ..models.hook_points import HookPoint

if TYPE_CHECKING:
    from ..models.hooked import HookedModel
    from .modules import SAE

LatentEdit = Callable[[torch.Tensor], torch.Tensor]
DERIVED = ("sae.input", "sae.latents", "sae.recon", "sae.error")


def _unchanged(name: str, x: torch.Tensor) -> torch.Tensor:
    return x


def check_sae_names(cfg) -> tuple[str, str]:
    """``(the name an SAE reads, the name it writes)`` of an `SAEConfig`, or a `SelectionError`
    when ``hook_name`` (or a transcoder's ``output_hook_name``) is empty or a glob pattern."""
    names = {"hook_name": cfg.hook_name}
    if cfg.is_transcoder:
        names["output_hook_name"] = cfg.output_hook_name
    for field, name in names.items():
        if not name:
            what = "the activation it reads" if field == "hook_name" else "the activation the transcoder reconstructs"
            raise SelectionError(f"the SAE's cfg.{field} is empty: set it to {what} (e.g. load_sae(path, "
                                 f"{field}='blocks.3.resid_post'), or sae.cfg.{field} = ...)")
        if not isinstance(name, str) or any(c in name for c in "*?["):
            raise SelectionError(f"the SAE's cfg.{field} must be one exact activation name, not {name!r}")
    return cfg.hook_name, names.get("output_hook_name", cfg.hook_name)


def _hooks(sae: SAE, *, keep_error: bool, edit: LatentEdit | None, skip_first: bool, fire: Fire,
           outlier_ratio: float | None = None) -> dict:
    cfg = sae.cfg
    base, _ = check_sae_names(cfg)
    inputs: dict[str, torch.Tensor] = {}

    def reconstruct(x_in: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The new value of ``target`` `[b, p, ...]` from the SAE's input ``x_in`` `[b, p, ...]`
        (per-head axes flattened for the SAE, restored on the way out)."""
        shape, x_in, target = target.shape, x_in.flatten(2), target.flatten(2)
        return _reconstruct(x_in, target).reshape(shape)

    def _reconstruct(x_in: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = fire(f"{base}.sae.input", x_in.to(sae.W_enc.dtype))
        clean = sae.encode(x)
        latents = fire(f"{base}.sae.latents", clean.clone() if keep_error else clean)
        if edit is not None:
            latents = edit(latents)
        new = fire(f"{base}.sae.recon", sae.decode(latents, x))
        if keep_error:
            new = new + fire(f"{base}.sae.error", target.to(new.dtype) - sae.decode(clean, x))
        new = new.to(target.dtype)
        left = massive_tokens(x_in, outlier_ratio)
        if skip_first:
            left[:, 0] = True
        return torch.where(left[..., None], target, new) if bool(left.any()) else new

    if not cfg.is_transcoder:
        return {base: lambda x, ctx: reconstruct(x, x)}

    def read(x: torch.Tensor, ctx) -> None:
        inputs["x"] = x

    def write(target: torch.Tensor, ctx) -> torch.Tensor:
        if "x" not in inputs:
            raise SelectionError(f"{cfg.output_hook_name!r} fired before {base!r}: "
                                 "a transcoder must read an activation computed before the one it writes")
        return reconstruct(inputs.pop("x"), target)

    return {base: read, cfg.output_hook_name: write}


def splice_hooks(sae: SAE, *, keep_error: bool = False, edit: LatentEdit | None = None,
                 skip_first: bool = False, outlier_ratio: float | None = None) -> dict:
    """Hooks (for ``model.hooks``) that replace the SAE's activation by its reconstruction.

    edit: ``fn(latents [batch, pos, d_sae]) -> latents`` applied before decoding (clamp, scale,
      zero latents). skip_first: leave position 0 (the attention sink, whose norm dwarfs the
      others) as it is. outlier_ratio: also leave the tokens whose input norm is over this many
      times the batch's median (`data.harvest.massive_tokens`) as they are.
    """
    return _hooks(sae, keep_error=keep_error, edit=edit, skip_first=skip_first, fire=_unchanged,
                  outlier_ratio=outlier_ratio)


class SAESplice:
    """An SAE or transcoder as a model extension (`HookedModel.attach`): spliced into every
    forward, adding ``<name>.sae.input/latents/recon`` (and ``.sae.error`` with ``keep_error``).
    ``model.saes(sae, ...)`` is the short form."""

    def __init__(self, sae: SAE, *, keep_error: bool = False, skip_first: bool = False,
                 outlier_ratio: float | None = None):
        self.sae, self.keep_error, self.skip_first, self.outlier_ratio = sae, keep_error, skip_first, outlier_ratio

    def hook_points(self, model: HookedModel) -> list[NewPoint]:
        cfg = self.sae.cfg
        check_sae_names(cfg)
        base = model.hook_point(cfg.hook_name)
        check_width(base, cfg.d_in, "reads d_in")
        if cfg.is_transcoder:
            check_width(model.hook_point(cfg.output_hook_name), cfg.d_output, "writes d_out")
        widths = {"sae.input": cfg.d_in, "sae.latents": cfg.d_sae, "sae.recon": cfg.d_output, "sae.error": cfg.d_output}
        names = DERIVED if self.keep_error else DERIVED[:3]
        return [NewPoint(f"{base.name}.{suffix}", base.name, widths[suffix]) for suffix in names]

    def hooks(self, model: HookedModel, fire: Fire) -> dict:
        return _hooks(self.sae, keep_error=self.keep_error, edit=None, skip_first=self.skip_first, fire=fire,
                      outlier_ratio=self.outlier_ratio)


def check_width(point: HookPoint, width: int, what: str) -> None:
    """A `SelectionError` unless ``point`` has one row per token (`data.harvest.check_per_token`)
    ``width`` wide (heads flattened); ``what`` names the SAE's side, e.g. ``"reads d_in"``."""
    have = token_width(point)
    if width != have:
        per_head = f" ({point.n_heads} heads x {point.width}, flattened)" if point.layout == "bphd" else ""
        raise SelectionError(f"the SAE {what} = {width}, but {point.name!r} is {have} wide in this model{per_head}")
