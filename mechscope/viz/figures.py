"""Plotly figure builders shared by results, the report and the app.

Conventions: every value is in the hover text; signed quantities (effects, attributions,
logit differences) use a diverging scale centred at 0 (blue negative, white 0, red
positive); unsigned ones (probabilities, attention scores, KL) a sequential one. Missing
cells are NaN and drawn empty. The builders take plain arrays and labels, never a result
or a model: this module is a leaf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

DIVERGING = "RdBu_r"  # blue (negative) - white (0) - red (positive)
SEQUENTIAL = "Blues"
Hover = Mapping[str, Any]  # name -> array of the trace's shape, shown in the hover box


def _array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def _hover(z_label: str, x_label: str, y_label: str, hover: Hover | None, shape: tuple[int, ...]
           ) -> tuple[np.ndarray | None, str]:
    """customdata `[*shape, k]` and a hovertemplate listing y, x, the value and the extra fields."""
    lines = [f"{y_label or 'y'}: %{{y}}", f"{x_label or 'x'}: %{{x}}", f"{z_label}: %{{z:.4g}}"]
    if not hover:
        return None, "<br>".join(lines) + "<extra></extra>"
    columns = []
    for i, (name, values) in enumerate(hover.items()):
        values = np.asarray(values, dtype=object)
        if values.shape != shape:
            raise ValueError(f"hover field {name!r} has shape {values.shape}, the values {shape}")
        columns.append(values)
        lines.append(f"{name}: %{{customdata[{i}]}}")
    return np.stack(columns, axis=-1), "<br>".join(lines) + "<extra></extra>"


def heatmap_trace(z: Any, x: Sequence | None = None, y: Sequence | None = None, *, signed: bool = False,
                  text: Any = None, hover: Hover | None = None, z_label: str = "value", x_label: str = "",
                  y_label: str = "", zmin: float | None = None, zmax: float | None = None,
                  robust: bool = False, coloraxis: str | None = None) -> go.Heatmap:
    """One heatmap trace of ``z`` `[rows, cols]` (rows labelled by ``y``, columns by ``x``);
    ``text`` `[rows, cols]` is written in the cells, ``hover`` adds named fields to the hover box.
    ``robust`` spans the colour scale over the 2nd-98th percentiles (outliers such as an
    attention sink saturate instead of washing out the rest; hover still shows every value)."""
    z = _array(z)
    finite = z[np.isfinite(z)]
    if robust and finite.size:
        if signed:
            bound = float(np.percentile(np.abs(finite), 98)) or None
            zmin, zmax = (-bound, bound) if bound else (zmin, zmax)
        else:
            zmin, zmax = float(np.percentile(finite, 2)), float(np.percentile(finite, 98))
    if z.ndim != 2:
        raise ValueError(f"a heatmap needs 2-d values, got shape {z.shape}")
    x = list(x) if x is not None else list(range(z.shape[1]))
    y = list(y) if y is not None else list(range(z.shape[0]))
    if (len(y), len(x)) != z.shape:
        raise ValueError(f"values {z.shape} do not match {len(y)} x {len(x)} labels")
    customdata, template = _hover(z_label, x_label, y_label, hover, z.shape)
    options: dict[str, Any] = {}
    if coloraxis is not None:
        options["coloraxis"] = coloraxis
    else:
        options.update(colorscale=DIVERGING if signed else SEQUENTIAL, colorbar={"title": {"text": z_label}})
        if signed:
            options["zmid"] = 0.0
        if zmin is not None:
            options["zmin"] = zmin
        if zmax is not None:
            options["zmax"] = zmax
    if text is not None:
        options.update(text=np.asarray(text, dtype=object), texttemplate="%{text}", textfont={"size": 9})
    return go.Heatmap(z=z, x=[str(v) for v in x], y=[str(v) for v in y], customdata=customdata,
                      hovertemplate=template, xgap=1, ygap=1, **options)


def _layout(fig: go.Figure, title: str, rows: int, height: int | None) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01, "font": {"size": 14}}, template="plotly_white",
                      height=height or max(360, min(2400, 140 + 18 * rows)), margin={"l": 60, "r": 30, "t": 70, "b": 50})
    return fig


def heatmap(z: Any, x: Sequence | None = None, y: Sequence | None = None, *, title: str = "", signed: bool = False,
            text: Any = None, hover: Hover | None = None, x_label: str = "", y_label: str = "",
            z_label: str = "value", zmin: float | None = None, zmax: float | None = None, robust: bool = False,
            height: int | None = None) -> go.Figure:
    """A heatmap figure: rows ``y`` top to bottom, columns ``x``; diverging and centred at 0
    when ``signed``. Used for layer x position, layer x head and head x head grids."""
    trace = heatmap_trace(z, x, y, signed=signed, text=text, hover=hover, z_label=z_label, x_label=x_label,
                          y_label=y_label, zmin=zmin, zmax=zmax, robust=robust)
    fig = go.Figure(trace)
    fig.update_yaxes(autorange="reversed", title_text=y_label, type="category")
    fig.update_xaxes(title_text=x_label, type="category")
    return _layout(fig, title, len(trace.y), height)


def facet_heatmaps(panels: Sequence[Mapping[str, Any]], *, title: str = "", signed: bool = False, cols: int | None = None,
                   shared_scale: bool = True, x_label: str = "", y_label: str = "", z_label: str = "value",
                   height: int | None = None) -> go.Figure:
    """Heatmaps side by side, one per panel (a mapping with ``z`` and optional ``x``, ``y``,
    ``title``, ``text``, ``hover``). With ``shared_scale`` one colour scale (and colour bar)
    serves every panel."""
    cols = cols or len(panels)
    rows = -(-len(panels) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p.get("title", "") for p in panels],
                        horizontal_spacing=0.08 if cols > 1 else 0.02, vertical_spacing=0.12 if rows > 1 else 0.02)
    if shared_scale:
        values = np.concatenate([_array(p["z"]).ravel() for p in panels])
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        axis: dict[str, Any] = {"colorscale": DIVERGING if signed else SEQUENTIAL, "colorbar": {"title": {"text": z_label}}}
        if signed:
            bound = max(abs(low), abs(high)) or 1.0
            axis.update(cmin=-bound, cmax=bound, cmid=0.0)
        else:
            axis.update(cmin=low, cmax=high)
        fig.update_layout(coloraxis=axis)
    n_rows = 0
    for i, panel in enumerate(panels):
        trace = heatmap_trace(panel["z"], panel.get("x"), panel.get("y"), signed=signed, text=panel.get("text"),
                              hover=panel.get("hover"), z_label=z_label, x_label=x_label, y_label=y_label,
                              coloraxis="coloraxis" if shared_scale else None)
        if not shared_scale and cols > 1:
            trace.colorbar.x = (i % cols + 1) / cols - 0.02
        fig.add_trace(trace, row=i // cols + 1, col=i % cols + 1)
        n_rows = max(n_rows, len(trace.y))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", title_text=x_label)
    fig.update_yaxes(title_text=y_label, col=1)
    return _layout(fig, title, n_rows * rows, height)


def line(x: Sequence, series: Mapping[str, Any], *, title: str = "", x_label: str = "", y_label: str = "value",
         signed: bool = False, hover: Mapping[str, Mapping[str, Any]] | None = None, height: int | None = None) -> go.Figure:
    """Line chart (markers on the points) of one or more ``series`` (name -> values over ``x``),
    e.g. a per-layer curve; a zero line is drawn for ``signed`` values."""
    fig = go.Figure()
    for name, values in series.items():
        extra = (hover or {}).get(name)
        customdata, template = None, f"{x_label or 'x'}: %{{x}}<br>{y_label}: %{{y:.4g}}"
        if extra:
            customdata = np.stack([np.asarray(v, dtype=object) for v in extra.values()], axis=-1)
            template += "".join(f"<br>{k}: %{{customdata[{i}]}}" for i, k in enumerate(extra))
        fig.add_trace(go.Scatter(x=list(x), y=_array(values), name=str(name), mode="lines+markers",
                                 customdata=customdata, hovertemplate=template + f"<extra>{name}</extra>"))
    if signed:
        fig.add_hline(y=0, line={"color": "gray", "width": 1})
    fig.update_xaxes(title_text=x_label)
    fig.update_yaxes(title_text=y_label)
    return _layout(fig, title, 0, height or 420)


def bar(x: Sequence, y: Any, *, title: str = "", x_label: str = "", y_label: str = "value", signed: bool = False,
        height: int | None = None) -> go.Figure:
    """Bar chart; signed values are coloured on the diverging scale (centred at 0)."""
    values = _array(y)
    bound = float(np.nanmax(np.abs(values))) if values.size and np.isfinite(values).any() else 1.0
    marker = ({"color": values, "colorscale": DIVERGING, "cmin": -bound, "cmax": bound, "cmid": 0.0}
              if signed else {"color": "#3b6fb6"})
    fig = go.Figure(go.Bar(x=[str(v) for v in x], y=values, marker=marker,
                           hovertemplate=f"{x_label or 'x'}: %{{x}}<br>{y_label}: %{{y:.4g}}<extra></extra>"))
    fig.update_xaxes(title_text=x_label, type="category")
    fig.update_yaxes(title_text=y_label)
    return _layout(fig, title, 0, height or 420)


def histogram(values: Any, *, title: str = "", x_label: str = "value", bins: int = 40,
              height: int | None = None) -> go.Figure:
    """Histogram of ``values`` (NaN left out) in ``bins`` equal bins; hover shows each bin's count."""
    values = _array(values).ravel()
    values = values[np.isfinite(values)]
    fig = go.Figure(go.Histogram(x=values, nbinsx=bins, marker={"color": "#3b6fb6"},
                                 hovertemplate=f"{x_label}: %{{x}}<br>count: %{{y}}<extra></extra>"))
    fig.update_xaxes(title_text=x_label)
    fig.update_yaxes(title_text="count")
    return _layout(fig, title, 0, height or 380)


def stack(figures: Sequence[go.Figure], *, title: str = "", row_heights: Sequence[float] | None = None,
          height: int | None = None) -> go.Figure:
    """The figures one below the other in one figure (their titles become subplot titles; each
    heatmap keeps its colour bar beside its own row)."""
    fig = make_subplots(rows=len(figures), cols=1, row_heights=list(row_heights) if row_heights else None,
                        subplot_titles=[sub.layout.title.text or "" for sub in figures], vertical_spacing=0.1)
    for row, sub in enumerate(figures, start=1):
        suffix = "" if row == 1 else str(row)
        domain = fig.layout[f"yaxis{suffix}"].domain
        for trace in sub.data:
            if isinstance(trace, go.Heatmap) and trace.coloraxis is None:
                trace.colorbar.update(y=(domain[0] + domain[1]) / 2, len=domain[1] - domain[0], yanchor="middle")
            fig.add_trace(trace, row=row, col=1)
        fig.update_xaxes(title_text=sub.layout.xaxis.title.text, type=sub.layout.xaxis.type, row=row, col=1)
        fig.update_yaxes(title_text=sub.layout.yaxis.title.text, type=sub.layout.yaxis.type,
                         autorange=sub.layout.yaxis.autorange, row=row, col=1)
    total = sum(sub.layout.height or 400 for sub in figures)
    return _layout(fig, title, 0, height or min(3000, total))
