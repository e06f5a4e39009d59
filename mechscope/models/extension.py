"""Attachable hook points: how a method adds names of its own to a model.

An extension (an SAE spliced into the forward, a probe readout, a steering point, a
transcoder's replacement nodes, a circuit graph's edge inputs) declares the hook points it
adds and the hooks that compute them. While it is attached with ``model.attach(ext)``, its
names behave like every other name: ``run_with_cache`` records them, ``hooks`` edits them,
``grad_metric`` takes their gradients, globs and close-match errors see them.

    class Doubled:                                        # adds "<name>.doubled"
        def __init__(self, name): self.name = name
        def hook_points(self, model):
            return [NewPoint(f"{self.name}.doubled", source=self.name, width=model.cfg.d_model)]
        def hooks(self, model, fire):
            return {self.name: lambda x, ctx: fire(f"{self.name}.doubled", 2 * x) / 2}

    with model.attach(Doubled("blocks.3.resid_post")):
        _, cache = model.run_with_cache(tokens, "blocks.3.resid_post.doubled")

``fire(name, x)`` runs the user's hooks and caches on ``x`` `[...]` for one of the extension's
names and returns what they leave (``x`` itself when nothing is registered there; hooks'
replacements are checked as everywhere, see `runtime.checked_replacement`); the extension
decides what to do with it (write it back, decode it, ...). An extension's points
are listed right after their source in ``model.names``, so execution order stays true.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from ..errors import ExtensionError

if TYPE_CHECKING:
    from .hooked import HookedModel

Fire = Callable[[str, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class NewPoint:
    """A hook point an extension adds: ``name`` is computed inside ``source``'s hook.

    width: size of its last axis; layout: axis letters as for `HookPoint` (``"bpd"``,
    ``"bphd"`` with ``n_heads``).
    """

    name: str
    source: str
    width: int
    layout: str = "bpd"
    n_heads: int | None = None

    def __post_init__(self) -> None:
        for label in ("name", "source", "layout"):
            value = getattr(self, label)
            if not isinstance(value, str) or not value:
                raise ExtensionError(f"NewPoint {label} must be a non-empty string, got {value!r}")
        sizes = {"width": self.width} if self.n_heads is None else {"width": self.width, "n_heads": self.n_heads}
        for label, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ExtensionError(f"NewPoint {self.name!r}: {label} must be a positive int, got {value!r}")


@runtime_checkable
class Extension(Protocol):
    """What ``model.attach`` needs from an extension."""

    def hook_points(self, model: HookedModel) -> Sequence[NewPoint]:
        """The points this extension adds (checked against the model: sources must exist)."""

    def hooks(self, model: HookedModel, fire: Fire) -> Any:
        """A hooks spec (as for ``model.hooks``) that computes the points, calling ``fire``."""
