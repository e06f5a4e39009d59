"""The interactive circuit view: nodes placed by layer (x) and head (y; the MLP above the heads,
the input left, the logits right), one line per edge, width by |score|, colour by sign, and a
hover box at each edge's midpoint with its name and score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .graph import Graph

WIDTH_BINS = 5
QKV_OFFSET = {"q": -0.18, "k": 0.0, "v": 0.18, "": 0.0}


def node_position(graph: Graph, name: str) -> tuple[float, float]:
    """``(x, y)`` of a node or destination node name (``"a3.h2"``, ``"a3.kv0"``, ``"m3"``, ``"input"``, ``"logits"``)."""
    H = graph.n_heads
    if name == "input":
        return -1.0, (H - 1) / 2
    if name == "logits":
        return float(graph.n_layers), (H - 1) / 2
    if name.startswith("m"):
        return int(name[1:]) + 0.45, float(H)
    layer, head = name[1:].split(".")
    if head.startswith("kv"):  # a KV head's inputs: drawn at the middle of its query group
        group = H // graph.n_kv_heads
        return float(layer), int(head[2:]) * group + (group - 1) / 2
    return float(layer), float(head[1:])


def circuit_figure(graph: Graph, frame: pd.DataFrame, column: str, *, top: int = 200, title: str = "") -> go.Figure:
    """Edges of ``frame`` (rows of a circuit/score table: src, dst, qkv, ``column``), the ``top``
    largest by |value|, drawn over the model's layers."""
    frame = frame.reindex(frame[column].abs().sort_values(ascending=False, kind="stable").index).head(top)
    fig = go.Figure()
    values = frame[column].to_numpy(float)
    bound = float(np.nanmax(np.abs(values))) if len(values) and np.isfinite(values).any() else 1.0
    bound = bound or 1.0
    bins = np.minimum((np.abs(values) / bound * WIDTH_BINS).astype(int), WIDTH_BINS - 1) if len(values) else values
    for sign, colour in ((1, "#b2182b"), (-1, "#2166ac")):
        for b in range(WIDTH_BINS):
            chosen = frame[(bins == b) & ((values >= 0) if sign > 0 else (values < 0))]
            if not len(chosen):
                continue
            xs, ys = [], []
            for src, dst, qkv in zip(chosen["src"], chosen["dst"], chosen["qkv"]):
                x0, y0 = node_position(graph, src)
                x1, y1 = node_position(graph, dst.split("<")[0])
                xs += [x0, x1 - 0.12, None]
                ys += [y0, y1 + QKV_OFFSET[qkv], None]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", hovertemplate=None,
                                     line={"width": 0.6 + 1.2 * b, "color": colour}, opacity=0.6, showlegend=False))
    mids = [(node_position(graph, s), node_position(graph, d.split("<")[0]), q)
            for s, d, q in zip(frame["src"], frame["dst"], frame["qkv"])]
    fig.add_trace(go.Scatter(
        x=[(a[0] + b[0]) / 2 for a, b, _ in mids], y=[(a[1] + b[1] + QKV_OFFSET[q]) / 2 for a, b, q in mids],
        mode="markers", marker={"size": 6, "opacity": 0}, customdata=np.stack([frame["edge"], values], -1) if len(frame) else None,
        hovertemplate="%{customdata[0]}<br>" + column + ": %{customdata[1]:.4g}<extra></extra>", showlegend=False))
    nodes = sorted({n for n in frame["src"]} | {d.split("<")[0] for d in frame["dst"]}, key=lambda n: node_position(graph, n))
    fig.add_trace(go.Scatter(
        x=[node_position(graph, n)[0] for n in nodes], y=[node_position(graph, n)[1] for n in nodes],
        mode="markers+text", text=nodes, textposition="top center", textfont={"size": 8},
        marker={"size": 9, "color": "#444", "symbol": ["square" if n.startswith("m") else "circle" for n in nodes]},
        hovertemplate="%{text}<extra></extra>", showlegend=False))
    fig.update_xaxes(title_text="layer", tickmode="array", tickvals=list(range(-1, graph.n_layers + 1)),
                     ticktext=["input", *map(str, range(graph.n_layers)), "logits"])
    fig.update_yaxes(title_text="head (MLP on top)", tickmode="array", tickvals=list(range(graph.n_heads + 1)),
                     ticktext=[*map(str, range(graph.n_heads)), "MLP"])
    fig.update_layout(title={"text": title, "x": 0.01, "font": {"size": 14}}, template="plotly_white",
                      height=max(420, 50 * graph.n_heads + 160))
    return fig


def curves_figure(curves: dict, ranking: str = "absolute", *, title: str = "") -> go.Figure:
    """Faithfulness curves of several methods on one plot: ``curves`` maps a label to a
    `FaithfulnessCurve`; each draws its ``ranking`` curve (bootstrap intervals as error bars),
    and the first one's random baseline is drawn dotted."""
    fig = go.Figure()
    for i, (label, curve) in enumerate(curves.items()):
        row = curve.RANKINGS.index(ranking)
        values, ci = curve.values[row].numpy(), curve.ci[row].numpy()
        fig.add_trace(go.Scatter(
            x=curve.percents, y=values, name=str(label), mode="lines+markers",
            error_y={"type": "data", "symmetric": False, "array": ci[:, 1] - values, "arrayminus": values - ci[:, 0]},
            customdata=np.asarray(curve.n_edges)[:, None],
            hovertemplate=f"{label}<br>%{{x}}% of edges (%{{customdata[0]}})<br>f: %{{y:.4g}}<extra></extra>"))
        if i == 0:
            random = curve.values[curve.RANKINGS.index("random")].numpy()
            fig.add_trace(go.Scatter(x=curve.percents, y=random, name="random edges", mode="lines",
                                     line={"dash": "dot", "color": "gray"}))
    fig.add_hline(y=1.0, line={"color": "gray", "width": 1, "dash": "dot"})
    fig.update_xaxes(type="log", title_text="% of edges")
    fig.update_yaxes(title_text=f"faithfulness ({ranking} ranking)")
    fig.update_layout(title=title or f"faithfulness by method ({ranking} ranking)", height=460)
    return fig
