"""Exceptions raised by mechscope. Every one carries a message meant for the user."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MechscopeError(Exception):
    """Base class of every error mechscope raises on purpose."""


class UnknownActivationError(MechscopeError, KeyError):
    """An activation name (or glob) that matches no hook point of the model."""

    def __init__(self, name: str, valid: Iterable[str]):
        valid = list(valid)
        close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
        hint = f" Closest valid names: {', '.join(close)}." if close else ""
        super().__init__(
            f"Unknown activation name {name!r}.{hint} "
            f"See `model.names` for all {len(valid)} names of this model."
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class HookShapeError(MechscopeError, ValueError):
    """A hook returned a tensor whose shape differs from the activation it replaces."""


class SelectionError(MechscopeError, ValueError):
    """Bad positions or heads selection, or mismatched prompt lengths."""


class UnsupportedArchitectureError(MechscopeError, ValueError):
    """The Hugging Face model type has no mechscope adapter."""


class ModelNotFoundError(MechscopeError, FileNotFoundError):
    """Weights or tokenizer could not be found locally and could not be downloaded."""


class OptionalDependencyError(MechscopeError, ImportError):
    """A feature needs an optional package (or program) that is not installed, e.g. kaleido for PNG export."""


class ResultFileError(MechscopeError, ValueError):
    """A file given to ``Result.load`` is not a saved mechscope result (or holds another class)."""


class ResultMismatchError(MechscopeError, ValueError):
    """The model or SAE passed to a result's method is not the one the result was computed with."""


class UnknownSAEArchitectureError(SelectionError):
    """An SAE architecture name that is not registered (see `mechscope.sae.architectures`)."""

    def __init__(self, name: str, valid: Iterable[str]):
        valid = sorted(valid)
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown SAE architecture {name!r}.{hint} Registered: {', '.join(valid)}.")


class BatchSourceExhaustedError(SelectionError):
    """A training run's batch source ran out before the last step."""


class ActivationCacheError(MechscopeError):
    """An activation cache on disk is missing, incomplete or unreadable."""


class ActivationCacheMismatchError(ActivationCacheError, SelectionError):
    """An activation cache on disk was harvested differently from what was asked (another
    spec, other token windows, a name it does not hold)."""


class CheckpointMismatchError(MechscopeError, ValueError):
    """A training checkpoint was written by a run with other settings than the one resuming it."""
