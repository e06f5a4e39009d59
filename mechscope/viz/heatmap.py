"""Self-contained HTML heatmaps (no plotting library needed)."""

from __future__ import annotations

import html
from collections.abc import Sequence

import torch


def _color(value: float, scale: float, diverging: bool) -> str:
    if scale == 0:
        return "#ffffff"
    t = max(-1.0, min(1.0, value / scale))
    if diverging:  # blue (negative) - white - red (positive)
        r, g, b = (255, int(255 * (1 - t)), int(255 * (1 - t))) if t >= 0 else (int(255 * (1 + t)), int(255 * (1 + t)), 255)
    else:  # white - dark blue
        r, g, b = int(255 * (1 - 0.85 * t)), int(255 * (1 - 0.7 * t)), int(255 * (1 - 0.3 * t))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap_html(values: torch.Tensor, row_labels: Sequence[str], col_labels: Sequence[str], *,
                 title: str = "", diverging: bool = True, fmt: str = "{:.2f}",
                 cell_text: Sequence[Sequence[str]] | None = None) -> str:
    """An HTML table coloured by ``values`` `[rows, cols]`; hover shows the exact value.

    ``diverging`` centres the colour scale at zero (red positive, blue negative); otherwise
    0 is white and the maximum dark. ``cell_text`` overrides the text shown in cells.
    """
    values = values.detach().float().cpu()
    if values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"values {tuple(values.shape)} do not match {len(row_labels)} x {len(col_labels)} labels")
    scale = values.abs().max().item() if diverging else values.max().item()
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in col_labels)
    rows = []
    for i, label in enumerate(row_labels):
        cells = []
        for j in range(len(col_labels)):
            v = values[i, j].item()
            text = cell_text[i][j] if cell_text is not None else fmt.format(v)
            cells.append(f'<td title="{v:.6g}" style="background:{_color(v, scale, diverging)}">{html.escape(text)}</td>')
        rows.append(f"<tr><th>{html.escape(str(label))}</th>{''.join(cells)}</tr>")
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    return (
        '<table style="border-collapse:collapse;font:11px monospace" border="1" cellpadding="2">'
        f"{caption}<tr><th></th>{head}</tr>{''.join(rows)}</table>"
    )
