"""For authors of new methods: the core's extension points (``ms.extend``).

- Names: an extension declares `NewPoint`s and the hooks that compute them; ``model.attach(ext)``
  makes them names like any other (caches, hooks, gradients). See `mechscope.models.extension`.
- Sweeps: `VariantSweep` runs many variants of one run stacked on the batch axis, each stack
  from its first touched block (`Stack`, `tile`, `resid_names`). See `mechscope.causal.sweep`.
- Partial forwards: ``model.run_from(layer, resid_pre, tokens)`` and
  ``model.run_with_cache(..., stop_early=True)``.
"""

from .causal.sweep import Stack, VariantSweep, resid_names, tile
from .models.extension import Extension, Fire, NewPoint

__all__ = ["Extension", "Fire", "NewPoint", "Stack", "VariantSweep", "resid_names", "tile"]
