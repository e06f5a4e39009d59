"""Plotly figures shared by results, the report and the app (a leaf: imports no method).

`figures` builds heatmaps (layer x position, layer x head, head x head), facets, line
charts, bars and histograms from plain arrays; `export` writes standalone HTML (plotly.js
inlined, or stored once per folder), HTML fragments and images.
"""

from .export import plotly_js_path, to_div, write_html, write_image
from .figures import DIVERGING, SEQUENTIAL, bar, facet_heatmaps, heatmap, heatmap_trace, histogram, line, stack

__all__ = ["DIVERGING", "SEQUENTIAL", "bar", "facet_heatmaps", "heatmap", "heatmap_trace", "histogram", "line",
           "plotly_js_path", "stack", "to_div", "write_html", "write_image"]
