"""Architecture adapters, for specialists adding a model family (``ms.adapters``).

An adapter is one declarative table (`Adapter` with its `Components`); `register_adapter`
checks it against the family's module tree (`verify_adapter`, on the meta device) before it
serves. See docs/adapters.md.
"""

from .models.adapters import ADAPTERS, get_adapter, register_adapter
from .models.adapters.base import Adapter, Components, FusedQKV, NormSpec, Proj, Site, derive_sites, since_transformers
from .models.adapters.verify import verify_adapter

__all__ = ["ADAPTERS", "Adapter", "Components", "FusedQKV", "NormSpec", "Proj", "Site", "derive_sites", "get_adapter",
           "register_adapter", "since_transformers", "verify_adapter"]
