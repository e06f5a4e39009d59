"""The result protocol: what every result class offers, in one place.

    frame = result.to_dataframe()           # tidy: one row per cell, named columns
    result.top(5, layer=3)                  # DataFrame: the 5 cells with the largest effect (NaN never ranked)
    fig = result.plot(kind="mlp")           # interactive plotly figure (hover values)
    result.save("trace.safetensors")        # tensors in safetensors, the rest as JSON in its header
    CausalTrace.load("trace.safetensors")   # or Result.load(path) for any class

A result class derives from `Result` and declares, as class attributes:

- ``_value``: the column ``top`` ranks and ``plot`` draws by default;
- ``_signed``: whether that value is a signed effect (ranked by ``|value - baseline|``, drawn on
  a diverging scale centred at 0) or an unsigned score (ranked largest first, sequential scale);
- ``_mean_over``: columns averaged away by ``top`` and ``plot`` unless the selection names them
  (``("prompt",)`` for per-prompt attributions: ``top(5)`` ranks the mean over prompts,
  ``top(5, prompt=2)`` one prompt's).

It implements ``to_dataframe()`` and ``plot(**selection)`` (built from `plot_data`, with the
figure builders of `mechscope.viz`); selection, ranking, the notebook display and
saving come from here. Results hold data only, never the model. Every subclass is recorded
in `RESULT_CLASSES`; ``tests/test_result_protocol.py`` runs the protocol's checks on each
and fails for a class it has no instance of.
"""

from __future__ import annotations

import dataclasses
import html
import os
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import MechscopeError, ResultFileError, SelectionError

RESULT_CLASSES: dict[str, type[Result]] = {}
FORMAT = 1


class Result:
    """Base of every result class (see the module docstring for the protocol)."""

    _value: ClassVar[str] = "value"
    _signed: ClassVar[bool] = True
    _mean_over: ClassVar[tuple[str, ...]] = ()
    _plot_value: ClassVar[str | None] = None  # the column plot draws when it is not _value

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        known = RESULT_CLASSES.get(cls.__name__)
        if known is None or known.__module__ == cls.__module__ or not known.__module__.startswith("mechscope."):
            RESULT_CLASSES[cls.__name__] = cls

    # -- what a class implements -------------------------------------------------------------

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy table: one row per cell, named columns."""
        raise NotImplementedError

    def plot(self, value: str | None = None, **selection: Any):
        """An interactive plotly figure of ``value`` (default the class's) over the selected rows."""
        raise NotImplementedError

    def summary(self) -> str:
        """One line saying what the result is (shown in notebooks)."""
        return f"{len(self.to_dataframe())} rows"

    def _baseline(self) -> float:
        """The value a signed cell is compared with when ranked (e.g. the unpatched run's)."""
        return 0.0

    def _plot_defaults(self, selection: dict[str, Any]) -> dict[str, Any]:
        """Selection applied by ``plot`` unless the caller's overrides it (e.g. one prompt)."""
        return {}

    # -- selection and ranking ---------------------------------------------------------------

    def select(self, **selection: Any) -> pd.DataFrame:
        """The rows matching ``selection`` (column=value; a list, tuple, set or range matches
        any of its values; a callable gets the column and returns a mask), with the
        ``_mean_over`` columns not named in it averaged away."""
        frame = filter_frame(self.to_dataframe(), selection, type(self).__name__)
        over = [c for c in self._mean_over if c not in selection and c in frame.columns]
        if over and len(frame):
            order = [c for c in frame.columns if c not in over]
            values = [c for c in order if pd.api.types.is_float_dtype(frame[c])]
            keys = [c for c in order if c not in values]
            frame = frame.groupby(keys, sort=False, dropna=False)[values].mean().reset_index()[order]
        return frame.reset_index(drop=True)

    def top(self, n: int = 5, *, by: str | None = None, ascending: bool | None = None, **selection: Any) -> pd.DataFrame:
        """The ``n`` selected rows ranked by ``by`` (default the class's value): signed values
        by ``|value - baseline|``, scores largest first (``ascending=True`` for smallest
        first). Rows whose value is NaN are never ranked."""
        frame = self.select(**selection)
        by = by or self._value
        if by not in frame.columns:
            raise SelectionError(f"{type(self).__name__} cannot rank by {by!r}; columns: {', '.join(frame.columns)}")
        column = pd.to_numeric(frame[by], errors="coerce").astype(float)
        if ascending is not None:
            key = column if ascending else -column
        elif self._signed and by == self._value:
            key = -(column - self._baseline()).abs()
        else:
            key = -column
        kept = column.notna()
        order = key[kept].sort_values(kind="stable").index
        return frame.loc[order].head(max(0, n)).reset_index(drop=True)

    def plot_column(self, value: str | None = None) -> str:
        """The column ``plot(value)`` draws."""
        return value or self._plot_value or self._value

    def plot_data(self, value: str | None = None, **selection: Any) -> pd.DataFrame:
        """The rows ``plot(value, **selection)`` draws (its figure's values are this frame's
        ``plot_column(value)``, NaN left empty)."""
        frame = self.select(**{**self._plot_defaults(selection), **selection})
        column = self.plot_column(value)
        if column not in frame.columns:
            raise SelectionError(f"{type(self).__name__} cannot plot {column!r}; columns: {', '.join(frame.columns)}")
        if not len(frame):
            raise SelectionError(f"the selection {selection} matches no row of this {type(self).__name__}")
        return frame

    # -- display --------------------------------------------------------------------------

    def _repr_html_(self) -> str:
        frame = self.to_dataframe()
        try:
            table = self.top(10).to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}")
            ranked = f"top {min(10, len(frame))} of {len(frame)} rows by {'|' + self._value + '|' if self._signed else self._value}"
        except MechscopeError:
            table, ranked = frame.head(10).to_html(index=False, border=0), f"first 10 of {len(frame)} rows"
        return (f"<div class='mechscope-result'><b>{type(self).__name__}</b>: {html.escape(self.summary())}<br>"
                f"<small>{ranked}; <code>.plot()</code> draws it, <code>.to_dataframe()</code> has every row</small>"
                f"{table}</div>")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        """In notebooks whose front end renders plotly (JupyterLab, VS Code), the figure; the
        HTML table of `_repr_html_` elsewhere."""
        try:
            bundle = self.plot()._repr_mimebundle_(include, exclude)
        except MechscopeError:
            return {}
        return {k: v for k, v in (bundle or {}).items() if k != "text/html"}

    # -- files ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to ``path`` (safetensors: tensors as tensors, every other field as
        JSON in the header; written atomically, read back without unpickling)."""
        tensors, fields = self._to_state()
        meta = {"mechscope_result": type(self).__name__, "format": FORMAT, "fields": _encode(fields)}
        save_checkpoint(path, tensors, meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Result:
        """Read a result written by `save`; ``Result.load`` reads any class, ``CausalTrace.load``
        only that one."""
        path = Path(path)
        if not path.is_file():
            raise ResultFileError(f"no saved result at {path}")
        try:
            tensors, meta = load_checkpoint(path)
        except Exception as error:  # not a safetensors file, or one without our header
            raise ResultFileError(f"{path} is not a saved mechscope result ({error})") from error
        name = meta.get("mechscope_result")
        klass = RESULT_CLASSES.get(name) if isinstance(name, str) else None
        if klass is None:
            raise ResultFileError(f"{path} is not a saved mechscope result" if name is None
                                  else f"{path} holds a {name}, which this mechscope does not know")
        if not issubclass(klass, cls):
            raise ResultFileError(f"{path} holds a {name}, not a {cls.__name__}")
        if meta.get("format", 0) > FORMAT:
            raise ResultFileError(f"{path} was written by a newer mechscope (format {meta['format']})")
        return klass._from_state(tensors, _decode(meta["fields"], tensors))

    def _to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(tensors, fields)``: dataclass fields that are tensors (or str-keyed dicts of
        tensors) go to safetensors, the others must be JSON-able (tuples and non-str keys kept)."""
        tensors: dict[str, torch.Tensor] = {}
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                tensors[f.name] = _stored(value)
                fields[f.name] = {"__tensor__": f.name}
            elif (isinstance(value, dict) and value and all(isinstance(k, str) for k in value)
                  and all(isinstance(v, torch.Tensor) for v in value.values())):
                fields[f.name] = {"__tensors__": {k: f"{f.name}/{k}" for k in value}}
                tensors.update({f"{f.name}/{k}": _stored(v) for k, v in value.items()})
            else:
                fields[f.name] = value
        return tensors, fields

    @classmethod
    def _from_state(cls, tensors: dict[str, torch.Tensor], fields: dict[str, Any]) -> Result:
        return cls(**fields)


def filter_frame(frame: pd.DataFrame, selection: dict[str, Any], owner: str = "result") -> pd.DataFrame:
    """Rows of ``frame`` matching ``selection`` (see `Result.select`)."""
    for column, wanted in selection.items():
        if column not in frame.columns:
            raise SelectionError(f"{owner} has no column {column!r} to select on; columns: {', '.join(frame.columns)}")
        values = frame[column]
        if callable(wanted):
            mask = wanted(values)
        elif isinstance(wanted, (list, tuple, set, frozenset, range)):
            mask = values.isin(list(wanted))
        else:
            mask = values == wanted
        frame = frame[pd.Series(mask, index=frame.index).fillna(False).astype(bool)]
    return frame


def _stored(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().clone()  # own storage: safetensors refuses shared memory


def _encode(value: Any) -> Any:
    """JSON-able form of a field, tuples and non-string keys tagged so they come back as they were."""
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v) for k, v in value.items()}
        if set(value) <= {"__tensor__", "__tensors__"}:
            return value
        return {"__items__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return value.item()
    raise ResultFileError(f"cannot save a field of type {type(value).__name__}; "
                          "the result class must override _to_state/_from_state")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tensors__" in value:
            return {k: tensors[name] for k, name in value["__tensors__"].items()}
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        if "__items__" in value:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def layer_head_label(layer: int, head: int) -> str:
    """``"L3H5"``: how results name a head."""
    return f"L{layer}H{head}"


def position_labels(token_labels: list[str]) -> list[str]:
    """``["0 When", "1 ·Mary", ...]``: labels of a position axis, from the tokens' display labels
    (`mechscope.models.tokens.token_labels`); the position keeps them unique where a token
    repeats (a figure's category axis would merge equal labels)."""
    return [f"{i} {label}" for i, label in enumerate(token_labels)]

