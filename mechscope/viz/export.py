"""Writing plotly figures: standalone HTML (offline), HTML fragments, PNG.

- ``write_html(fig, path)`` inlines plotly.js (about 4.8 MB) so the file opens anywhere,
  offline: the form for users.
- ``write_html(fig, path, plotlyjs="directory")`` refers to ``plotly.min.js`` beside the file
  and copies it there once if it is missing, so a folder of figures (the docs) stores the
  library a single time.
- ``write_image(fig, path)`` needs the optional ``kaleido`` package (and the browser it drives).
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
from pathlib import Path

import plotly
import plotly.graph_objects as go

from ..errors import OptionalDependencyError

PLOTLYJS_MODES = ("inline", "directory", "cdn")


def plotly_js_path() -> Path:
    """The ``plotly.min.js`` bundled with the installed plotly package."""
    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _include(plotlyjs: str) -> bool | str:
    if plotlyjs == "inline":
        return True
    if plotlyjs in ("directory", "cdn"):
        return plotlyjs
    if plotlyjs.endswith(".js"):  # a path or URL to plotly.js, relative to the page
        return plotlyjs
    raise ValueError(f"plotlyjs must be one of {PLOTLYJS_MODES} or a path ending in .js, got {plotlyjs!r}")


def to_div(fig: go.Figure, *, plotlyjs: str | bool = False, div_id: str | None = None) -> str:
    """The figure as an HTML fragment (a ``<div>`` and its script) for a page that loads
    plotly.js itself (``plotlyjs=False``), or with plotly.js as in `write_html`."""
    include = plotlyjs if plotlyjs is False else _include(plotlyjs)
    return fig.to_html(full_html=False, include_plotlyjs=include, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def write_html(fig: go.Figure, path: str | os.PathLike, *, plotlyjs: str = "inline", title: str | None = None,
               description: str = "") -> Path:
    """Write ``fig`` as a standalone HTML page and return its path.

    plotlyjs: ``"inline"`` (default: the library inside the file, works offline),
      ``"directory"`` (``plotly.min.js`` beside the file, copied there if missing),
      ``"cdn"`` (loaded from the web) or a relative path/URL ending in ``.js``.
    description: HTML shown above the figure (e.g. how it was made).
    The div id comes from the file name, so rewriting a figure from the same data gives the same file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    include = _include(plotlyjs)
    if plotlyjs == "directory" and not (path.parent / "plotly.min.js").is_file():
        shutil.copyfile(plotly_js_path(), path.parent / "plotly.min.js")
    div_id = re.sub(r"[^A-Za-z0-9_-]", "-", path.stem) or "figure"
    title = title if title is not None else (fig.layout.title.text or path.stem)
    body = to_div(fig, plotlyjs=plotlyjs, div_id=div_id) if include is not True else fig.to_html(
        full_html=False, include_plotlyjs=True, div_id=div_id, config={"displaylogo": False, "responsive": True})
    page = (f"<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(_plain(title))}</title>\n"
            "<style>body{font-family:system-ui,sans-serif;margin:1em 2em} p.description{max-width:60em}</style>\n"
            f"</head>\n<body>\n{f'<p class=description>{description}</p>' if description else ''}\n{body}\n</body>\n</html>\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _plain(text: str) -> str:
    return re.sub(r"<[^>]+>", " ", text).strip()


def write_image(fig: go.Figure, path: str | os.PathLike, *, scale: float = 2.0, width: int | None = None,
                height: int | None = None) -> Path:
    """Write ``fig`` as a static image (PNG, SVG, PDF: from the suffix). Needs ``kaleido``
    (``pip install kaleido``) and the Chrome/Chromium it drives; raises
    `OptionalDependencyError` saying so otherwise."""
    if importlib.util.find_spec("kaleido") is None:
        raise OptionalDependencyError("static image export needs the optional package kaleido "
                                      "(pip install kaleido) and a Chrome/Chromium browser; "
                                      "write_html works without them")
    path = Path(path)
    try:
        fig.write_image(str(path), scale=scale, width=width, height=height)
    except Exception as error:  # kaleido reports a missing browser in its own ways
        raise OptionalDependencyError(f"kaleido could not export {path.name}: {error}") from error
    return path
