"""The figure builders and writers: values and labels land where they should, signed scales
centre at 0, standalone HTML works offline, docs-style HTML stores plotly.js once."""

from __future__ import annotations

import importlib.util

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from mechscope import viz
from mechscope.errors import OptionalDependencyError


def test_heatmap_values_labels_and_scales():
    z = torch.tensor([[1.0, -2.0, float("nan")], [0.5, 0.0, 3.0]])
    fig = viz.heatmap(z, ["a", "b", "c"], ["r0", "r1"], signed=True, hover={"extra": [[1, 2, 3], [4, 5, 6]]},
                      title="t", x_label="pos", y_label="layer")
    trace = fig.data[0]
    np.testing.assert_array_equal(np.asarray(trace.z), z.numpy())
    assert list(trace.x) == ["a", "b", "c"] and list(trace.y) == ["r0", "r1"]
    assert trace.zmid == 0 and trace.colorscale and "extra" in trace.hovertemplate and "layer" in trace.hovertemplate
    assert fig.layout.yaxis.autorange == "reversed"  # first row at the top, as in a table
    assert viz.heatmap(z.abs()).data[0].zmid is None  # unsigned: sequential, not centred
    with pytest.raises(ValueError, match="do not match"):
        viz.heatmap(z, ["a"], ["r0", "r1"])
    robust = viz.heatmap(np.r_[np.arange(99.0), 1e6].reshape(10, 10), robust=True).data[0]
    assert robust.zmax < 1e3  # one outlier does not set the scale


def test_facets_share_one_centred_scale_and_stack_keeps_traces():
    panels = [{"z": [[1.0, -4.0]], "title": "a"}, {"z": [[2.0, 0.5]], "title": "b"}]
    fig = viz.facet_heatmaps(panels, signed=True)
    assert len(fig.data) == 2 and fig.layout.coloraxis.cmid == 0 and fig.layout.coloraxis.cmax == 4
    assert [a.text for a in fig.layout.annotations] == ["a", "b"]
    stacked = viz.stack([viz.heatmap([[1.0]], title="h"), viz.bar(["x", "y"], [1.0, -1.0], signed=True, title="b")])
    assert [type(t) for t in stacked.data] == [go.Heatmap, go.Bar] and stacked.data[1].marker.cmid == 0
    line = viz.line([0, 1, 2], {"s": [1.0, 2.0, 3.0]}, signed=True)
    assert list(line.data[0].y) == [1.0, 2.0, 3.0]
    hist = viz.histogram([1.0, float("nan"), 2.0])
    assert list(hist.data[0].x) == [1.0, 2.0]


def test_write_html_inline_and_directory(tmp_path):
    fig = viz.heatmap([[1.0, 2.0]], title="a <b>title</b>")
    inline = viz.write_html(fig, tmp_path / "inline" / "fig.html", description="made <i>here</i>")
    page = inline.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>a  title</title>" in page and "made <i>here</i>" in page
    assert len(page) > 3_000_000 and "plotly.min.js" not in page and "https://" not in page.split("<body>")[0]
    assert viz.write_html(fig, tmp_path / "inline" / "fig.html", description="made <i>here</i>").read_text() == page
    first = viz.write_html(fig, tmp_path / "docs" / "one.html", plotlyjs="directory")
    second = viz.write_html(fig, tmp_path / "docs" / "two.html", plotlyjs="directory")
    js = tmp_path / "docs" / "plotly.min.js"
    assert js.is_file() and js.stat().st_size == viz.plotly_js_path().stat().st_size
    for path in (first, second):
        text = path.read_text()
        assert 'src="plotly.min.js"' in text and len(text) < 100_000
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["one.html", "plotly.min.js", "two.html"]
    before = first.read_text()  # rewriting from the same figure gives the same file (the div id is the file name)
    assert viz.write_html(fig, tmp_path / "docs" / "one.html", plotlyjs="directory").read_text() == before
    with pytest.raises(ValueError, match="plotlyjs"):
        viz.write_html(fig, tmp_path / "x.html", plotlyjs="nowhere")
    assert "Plotly.newPlot" in viz.to_div(fig) and "<html" not in viz.to_div(fig)


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is not None, reason="kaleido is installed here")
def test_png_export_without_kaleido_says_what_is_missing(tmp_path):
    with pytest.raises(OptionalDependencyError, match="kaleido"):
        viz.write_image(viz.heatmap([[1.0]]), tmp_path / "fig.png")
