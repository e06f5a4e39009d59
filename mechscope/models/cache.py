"""``ActivationCache``: activations (and optionally gradients) recorded by name."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch

from ..errors import MechscopeError, UnknownCachedActivationError
from .selection import Positions, index_for

if TYPE_CHECKING:
    from .runtime import HookContext, HookFn


def recorder(store: dict[str, torch.Tensor], *, positions: Positions = None, clone: bool = False,
             device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> HookFn:
    """A hook storing what it receives (detached) under its name in ``store``: only
    ``positions`` (see `selection`) if given, copied with ``clone`` (caches keep references,
    so a later in-place edit shows in them otherwise), moved to ``device`` / ``dtype``."""

    def record(x: torch.Tensor, ctx: HookContext) -> None:
        x = x.detach()
        if positions is not None:
            x = x[index_for(x.shape, ctx.point.pos_dim, None, None, positions, x.device)].clone()
        elif clone:
            x = x.clone()
        store[ctx.name] = x.to(device=device, dtype=dtype) if (device or dtype) else x

    return record


class ActivationCache(Mapping[str, torch.Tensor]):
    """Read-only mapping from activation name to tensor, in execution order.

    A name it does not hold raises `UnknownCachedActivationError` (a ``KeyError``, so ``name in
    cache`` and ``cache.get(name)`` work), with the closest cached names.

    Entries share storage with the forward pass where they can (an activation that is
    also the next block's input is stored once), so ``nbytes`` counts unique storage.
    ``grads`` holds gradients of the same names when the run asked for them.
    """

    def __init__(self, acts: dict[str, torch.Tensor], all_names: list[str], grads: dict[str, torch.Tensor] | None = None):
        order = {name: i for i, name in enumerate(all_names)}
        self._acts = dict(sorted(acts.items(), key=lambda kv: order.get(kv[0], len(order))))
        self._all_names = all_names
        self._grads = grads

    def __getitem__(self, name: str) -> torch.Tensor:
        if isinstance(name, str) and name in self._acts:
            return self._acts[name]
        raise UnknownCachedActivationError(name, self._acts, self._all_names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    @property
    def grads(self) -> ActivationCache:
        """Gradients of the metric with respect to the cached activations."""
        if self._grads is None:
            raise MechscopeError("this cache holds no gradients; pass grad_metric= to run_with_cache")
        return ActivationCache(self._grads, self._all_names)

    def select(self, pattern: str) -> list[str]:
        """Cached names matching a glob, in execution order."""
        names = fnmatch.filter(self._acts, pattern)
        if not names:
            raise UnknownCachedActivationError(pattern, self._acts, self._all_names)
        return names

    def stack(self, pattern: str) -> torch.Tensor:
        """Stack the cached activations matching ``pattern`` along a new first axis.

        ``cache.stack("blocks.*.resid_post")`` -> `[n_layers, batch, pos, d_model]`.
        """
        return torch.stack([self._acts[n] for n in self.select(pattern)])

    @property
    def nbytes(self) -> int:
        """Bytes of unique storage held by the cache (aliased entries counted once)."""
        seen: dict[int, int] = {}
        for tensor in self._acts.values():
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return sum(seen.values())

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ActivationCache:
        moved = {k: v.to(device=device, dtype=dtype) for k, v in self._acts.items()}
        grads = None if self._grads is None else {k: v.to(device=device, dtype=dtype) for k, v in self._grads.items()}
        return ActivationCache(moved, self._all_names, grads)

    def __repr__(self) -> str:
        mib = self.nbytes / 2**20
        return f"ActivationCache({len(self)} activations, {mib:.1f} MiB{', with grads' if self._grads else ''})"
