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


class CacheLocationError(MechscopeError, NotADirectoryError):
    """``$MECHSCOPE_CACHE`` (or a folder inside it) is a file, not a directory."""


class CacheEntryError(MechscopeError, ValueError):
    """An entry of the mechscope cache (e.g. the converted bundled model) is incomplete or corrupt."""


class ModelArgumentError(MechscopeError, TypeError):
    """``mechscope.load`` was given something that is not a name, a path or a built model."""


class HookReturnError(MechscopeError, TypeError):
    """A hook returned something other than a tensor (or None)."""


class HookDtypeError(HookReturnError):
    """A hook returned a tensor of a dtype that cannot replace the activation (integer, bool or
    complex for a floating activation); floating returns are cast to the activation's dtype."""


class HookDeviceError(MechscopeError, ValueError):
    """A hook returned a tensor on another device than the activation it replaces."""


class SignatureError(MechscopeError, TypeError):
    """A user function (hook, metric) cannot take the arguments mechscope calls it with."""


class MetricError(MechscopeError, ValueError):
    """A metric broke its contract: ``metric(logits [batch, pos, vocab], pairs) -> [batch]``,
    or a metric to differentiate returned something without a gradient."""


class ExtensionError(MechscopeError, TypeError):
    """An extension's ``hook_points()`` returned something other than `NewPoint` objects, or a
    `NewPoint` has a bad field."""


class MechscopeWarning(UserWarning):
    """A result that may not mean what it seems (e.g. a normalisation by zero)."""


class ArgumentTypeError(MechscopeError, TypeError):
    """An argument of a type mechscope does not accept (the message names the accepted types)."""


class UnsupportedArgumentError(MechscopeError, TypeError):
    """A keyword argument mechscope does not take (often a TransformerLens one); the message
    gives the mechscope equivalent."""


class TokenIdError(MechscopeError, IndexError):
    """Token ids outside the model's (or tokenizer's) vocabulary, or negative."""


class UnknownCachedActivationError(UnknownActivationError):
    """A name looked up in an `ActivationCache` that the cache does not hold."""

    def __init__(self, name: str, cached: Iterable[str], model_names: Iterable[str]):
        cached = list(cached)
        close = difflib.get_close_matches(name, cached, n=5, cutoff=0.5) if isinstance(name, str) else []
        if isinstance(name, tuple):
            reason = (f"{name!r}: caches are keyed by full names, e.g. cache['blocks.3.resid_post'] for "
                      "TransformerLens's cache['resid_post', 3].")
        elif isinstance(name, str) and name in set(model_names):
            reason = (f"{name!r} is an activation of the model but was not cached; "
                      "pass it in run_with_cache(names=...).")
        else:
            reason = f"{name!r} is not in this cache."
        hint = f" Closest cached names: {', '.join(close)}." if close else ""
        held = f"{len(cached)} name{'' if len(cached) == 1 else 's'}"
        MechscopeError.__init__(self, f"{reason}{hint} The cache holds {held} (list(cache)).")


class ContextLengthWarning(MechscopeWarning):
    """An input is longer than the model's context length (``cfg.n_ctx``): its results past
    that length are outside what the model was trained on. Make it an error with
    ``warnings.simplefilter("error", ms.ContextLengthWarning)``."""


class ArgumentError(MechscopeError, ValueError):
    """A command-line argument (or a combination of them) that cannot work, found before any work starts."""


class OutputPathError(MechscopeError, FileExistsError):
    """An output path that exists as a file where a folder is needed, or as a folder where a file is."""


class AlreadyWrappedError(MechscopeError, ValueError):
    """A Hugging Face model that a live `HookedModel` already wraps was wrapped again: the second
    wrapper would take over its attention routing and silently stop the first one's hooks."""
