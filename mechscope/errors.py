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
