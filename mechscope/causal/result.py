"""The result of a patching sweep: a metric per cell and prompt, normalised, tabulated, drawn."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import MechscopeWarning
from ..models.tokens import visible
from ..result import Result, layer_head_label
from ..viz import figures
from .metrics import normalized


@dataclass
class PatchingResult(Result):
    """``raw`` `[n_layers, *axes sizes, n_prompts]` metric per cell and prompt; ``values``
    `[n_layers, *axes sizes]` its mean over prompts normalised by the clean and corrupted
    metrics (0 = corrupted behaviour, 1 = clean); NaN everywhere, with a `MechscopeWarning` when
    the result is made, where the mean clean and corrupted metrics are equal or not finite (the
    normalisation would divide by zero). ``axes`` names the dims after the layer
    (``"head"``, ``"pos"``); ``method`` is ``"activation"``, ``"attribution"`` or ``"path"``.
    ``pos_labels`` (optional) names the positions in tables and plots (e.g. prompt 0's tokens,
    shown with whitespace made visible).

    Protocol (`mechscope.result`): ``to_dataframe()`` has a row per cell (layer, its axes,
    ``normalized``, ``metric`` = mean raw metric); ``top(n, **selection)`` ranks cells by how
    far their patch moves the normalised metric from the unpatched run's (0 when denoising,
    1 when noising); ``plot()`` draws layer x position, layer x head, (layer, head) x position
    heatmaps or, for whole layers, a per-layer line."""

    component: str
    direction: str
    raw: torch.Tensor
    clean_metric: torch.Tensor
    corrupted_metric: torch.Tensor
    axes: tuple[str, ...]
    method: str = "activation"
    pos_labels: list[str] | None = None

    _value = "normalized"
    _signed = True

    def __post_init__(self) -> None:
        self.axes = tuple(self.axes)
        if not self._normalisable():
            clean, corrupted = self._means()
            warnings.warn(
                f"{self.method} patching of {self.component}: the mean clean metric ({clean:.6g}) and corrupted "
                f"metric ({corrupted:.6g}) are {'equal' if clean == corrupted else 'not both finite'}, so the "
                "normalised values are undefined (NaN) and top() ranks nothing by them; the raw metric "
                "(result.raw, the 'metric' column) is unaffected. Check that the corruption changes the "
                "metric (different prompts, answers distinct from the wrong answers).",
                MechscopeWarning, stacklevel=4)

    def _means(self) -> tuple[float, float]:
        return float(self.clean_metric.float().mean()), float(self.corrupted_metric.float().mean())

    def _normalisable(self) -> bool:
        clean, corrupted = self._means()
        return math.isfinite(clean) and math.isfinite(corrupted) and clean != corrupted

    @property
    def values(self) -> torch.Tensor:
        mean = self.raw.mean(-1)
        if not self._normalisable():
            return torch.full_like(mean.float(), math.nan)
        return normalized(mean, self.clean_metric.mean(), self.corrupted_metric.mean())

    def _baseline(self) -> float:
        return 0.0 if self.direction == "denoise" else 1.0

    def summary(self) -> str:
        cells = " x ".join(("layer", *self.axes))
        return (f"{self.method} patching ({self.direction}) of {self.component}: {self.values.numel()} cells "
                f"({cells}), {self.raw.shape[-1]} prompts; normalised metric, 0 = corrupted, 1 = clean")

    def to_dataframe(self) -> pd.DataFrame:
        """One row per cell: layer, its coordinates, the normalised value and the mean raw metric."""
        values, raw = self.values.detach().float().cpu(), self.raw.mean(-1).detach().float().cpu()
        index = np.indices(tuple(values.shape)).reshape(values.ndim, -1)
        data: dict[str, object] = {"layer": index[0]}
        for i, axis in enumerate(self.axes, start=1):
            data[axis] = index[i]
        if self.pos_labels is not None and "pos" in self.axes:
            data["token"] = [visible(self.pos_labels[p]) for p in data["pos"]]
        data["normalized"] = values.flatten().numpy().astype(float)
        data["metric"] = raw.flatten().numpy().astype(float)
        return pd.DataFrame(data)

    def plot(self, value: str | None = None, *, pos_labels: list[str] | None = None, **selection):
        """Heatmap of ``value`` (default ``normalized``; or ``metric``): rows are layers (or
        ``L{l}H{h}`` with heads x positions), columns the last cell axis; a line over layers for
        whole-layer cells. ``selection`` filters cells first: ``plot(pos=14)``, ``plot(layer=range(20, 30))``."""
        frame = self.plot_data(value, **selection)
        column = self.plot_column(value)
        labels = pos_labels if pos_labels is not None else self.pos_labels
        title = f"{self.method} patching ({self.direction}) of {self.component}: {column}"
        z_label = "normalised metric" if column == "normalized" else column
        if not self.axes:
            frame = frame.sort_values("layer")
            return figures.line(frame["layer"].tolist(), {column: frame[column].to_numpy()}, title=title,
                                x_label="layer", y_label=z_label, signed=True,
                                hover={column: {"metric": frame["metric"].round(4).tolist()}})
        last = self.axes[-1]
        row_keys = ["layer", *self.axes[:-1]]
        z = frame.pivot(index=row_keys, columns=last, values=column)
        metric = frame.pivot(index=row_keys, columns=last, values="metric")
        rows = [f"L{key}" if len(row_keys) == 1 else layer_head_label(*key) for key in z.index]
        if last == "pos":
            cols = [f"{p}:{visible(labels[p])}" if labels is not None else str(p) for p in z.columns]
        else:
            cols = [f"H{c}" if last == "head" else str(c) for c in z.columns]
        y_label = "layer" if len(row_keys) == 1 else "layer, head"
        return figures.heatmap(z.to_numpy(dtype=float), cols, rows, title=title, signed=True, x_label=last,
                               y_label=y_label, z_label=z_label, hover={"metric": np.round(metric.to_numpy(float), 4)})
