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
keyed by ``cfg.hook_name``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..data.harvest import massive_tokens
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


def _hooks(sae: SAE, *, keep_error: bool, edit: LatentEdit | None, skip_first: bool, fire: Fire,
           outlier_ratio: float | None = None) -> dict:
    cfg = sae.cfg
    if not cfg.hook_name:
        raise SelectionError("the SAE's cfg.hook_name is empty: set it to the activation it reads")
    if cfg.is_transcoder and not cfg.output_hook_name:
        raise SelectionError("a transcoder needs cfg.output_hook_name, the activation it reconstructs")
    base = cfg.hook_name
    inputs: dict[str, torch.Tensor] = {}

    def reconstruct(x_in: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
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
        if not cfg.hook_name:
            raise SelectionError("the SAE's cfg.hook_name is empty: set it to the activation it reads")
        base = model.hook_point(cfg.hook_name)
        _check_width(base, cfg.d_in, "reads d_in")
        if cfg.is_transcoder:
            _check_width(model.hook_point(cfg.output_hook_name), cfg.d_output, "writes d_out")
        widths = {"sae.input": cfg.d_in, "sae.latents": cfg.d_sae, "sae.recon": cfg.d_output, "sae.error": cfg.d_output}
        names = DERIVED if self.keep_error else DERIVED[:3]
        return [NewPoint(f"{base.name}.{suffix}", base.name, widths[suffix]) for suffix in names]

    def hooks(self, model: HookedModel, fire: Fire) -> dict:
        return _hooks(self.sae, keep_error=self.keep_error, edit=None, skip_first=self.skip_first, fire=fire,
                      outlier_ratio=self.outlier_ratio)


def _check_width(point: HookPoint, width: int, what: str) -> None:
    if point.layout != "bpd":
        raise SelectionError(f"SAEs read and write [batch, pos, d] activations; {point.name!r} has layout {point.layout!r}")
    if width != point.width:
        raise SelectionError(f"the SAE {what} = {width}, but {point.name!r} is {point.width} wide in this model")
