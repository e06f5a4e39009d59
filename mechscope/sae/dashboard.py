"""A self-contained HTML dashboard of SAE latents: one file, no network, a searchable list and a
page per latent (``#<latent>`` in the URL) with its statistics, activation histogram, logit
effects, top-activating contexts and examples at activation quantiles. Tokens are shown as
labels (`models.tokens.visible`: decoded text, ``·`` for a space, ``↵`` for a newline)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..models.tokens import visible

if TYPE_CHECKING:
    from .features import LatentReport

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#222}
#side{width:290px;border-right:1px solid #ddd;display:flex;flex-direction:column}
#side input{margin:8px;padding:6px;font-size:14px}
#list{overflow-y:auto;flex:1}
#list div{padding:4px 10px;cursor:pointer;font-size:13px;border-bottom:1px solid #f2f2f2}
#list div:hover,#list div.on{background:#fff1e0}
#main{flex:1;overflow-y:auto;padding:16px 24px}
.ctx{font-family:ui-monospace,monospace;font-size:12px;margin:3px 0;white-space:pre-wrap;line-height:1.6}
.ctx span{border-radius:2px}
table{border-collapse:collapse;font-size:13px;margin-right:24px}
td{padding:1px 8px}
.row{display:flex;flex-wrap:wrap;align-items:flex-start}
.muted{color:#777;font-size:12px}
h3{margin:18px 0 6px}
"""

_SCRIPT = """
const data = JSON.parse(document.getElementById('latents').textContent);
const meta = JSON.parse(document.getElementById('meta').textContent);
const edges = JSON.parse(document.getElementById('edges').textContent);
const byId = new Map(data.map(r => [String(r.latent), r]));
const list = document.getElementById('list');
const main = document.getElementById('main');
const search = document.getElementById('search');

function esc(s) {
  return String(s).replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));
}
function summary(r) {
  return r.promoted.slice(0, 3).map(p => p[0]).join(' ');
}
function renderList() {
  const q = search.value.trim().toLowerCase();
  list.innerHTML = '';
  for (const r of data) {
    const text = (r.latent + ' ' + r.label + ' ' + summary(r) + ' ' +
                  r.top_examples.slice(0, 3).map(e => e.tokens[e.peak]).join(' ')).toLowerCase();
    if (q && !text.includes(q)) continue;
    const item = document.createElement('div');
    item.dataset.latent = r.latent;
    item.innerHTML = '<b>' + r.latent + '</b> ' + esc(r.label || summary(r)) +
                     ' <span class="muted">' + (100 * r.density).toFixed(3) + '%</span>';
    item.onclick = () => { location.hash = r.latent; };
    list.appendChild(item);
  }
}
function context(e, scale) {
  const spans = e.tokens.map((t, i) => {
    const a = Math.max(0, e.values[i]) / (scale || 1);
    return '<span title="' + e.values[i].toFixed(3) + '" style="background:rgba(255,140,0,' +
           Math.min(1, a).toFixed(3) + ')">' + esc(t) + '</span>';
  });
  return '<div class="ctx">' + spans.join('') + ' <span class="muted">max ' + e.max_value.toFixed(2) + '</span></div>';
}
function histogram(counts) {
  const top = Math.max(1, ...counts);
  const w = 6, h = 80;
  const bars = counts.map((c, i) => '<rect x="' + i * w + '" y="' + (h - h * c / top) + '" width="' + (w - 1) +
    '" height="' + h * c / top + '" fill="#f08c00"><title>' + edges[i].toPrecision(3) + ' to ' +
    edges[i + 1].toPrecision(3) + ': ' + c + '</title></rect>');
  return '<svg width="' + counts.length * w + '" height="' + h + '">' + bars.join('') + '</svg>' +
         '<div class="muted">non-zero activations, log scale from ' + edges[0] + ' to ' + edges[edges.length - 1] + '</div>';
}
function tokens(rows) {
  return '<table>' + rows.map(p => '<tr><td class="ctx">' + esc(p[0]) + '</td><td>' + p[1].toFixed(3) +
         '</td></tr>').join('') + '</table>';
}
function show(id) {
  const r = byId.get(String(id));
  for (const el of list.children) el.classList.toggle('on', el.dataset.latent === String(id));
  if (!r) { main.innerHTML = '<p>Latent ' + esc(id) + ' is not in this dashboard.</p>'; return; }
  let out = '<h2>Latent ' + r.latent + (r.label ? ': ' + esc(r.label) : '') + '</h2>' +
    '<p>density ' + (100 * r.density).toFixed(4) + '% of tokens, max activation ' + r.max_activation.toFixed(3) + '</p>' +
    '<div class="row"><div><h3>Activations</h3>' + histogram(r.histogram_counts) + '</div>' +
    '<div><h3>Promoted tokens</h3>' + tokens(r.promoted) + '</div>' +
    '<div><h3>Suppressed tokens</h3>' + tokens(r.suppressed) + '</div></div>' +
    '<h3>Top contexts</h3>' + r.top_examples.map(e => context(e, r.max_activation)).join('');
  for (const g of r.quantiles.slice().reverse()) {
    out += '<h3>Windows with max in ' + g.low.toFixed(3) + ' to ' + g.high.toFixed(3) + '</h3>' +
           g.examples.map(e => context(e, r.max_activation)).join('');
  }
  main.innerHTML = out;
}
search.oninput = renderList;
window.onhashchange = () => show(location.hash.slice(1));
renderList();
show(location.hash.slice(1) || (data.length ? data[0].latent : ''));
"""


def _shown(report: dict) -> dict:
    """A report's dict (`LatentReport.to_dict`) with every token as its visible label."""
    def example(e: dict) -> dict:
        return {**e, "tokens": [visible(t) for t in e["tokens"]]}

    return {**report, "top_examples": [example(e) for e in report["top_examples"]],
            "quantiles": [{**g, "examples": [example(e) for e in g["examples"]]} for g in report["quantiles"]],
            "promoted": [(visible(t), v) for t, v in report["promoted"]],
            "suppressed": [(visible(t), v) for t, v in report["suppressed"]]}


def _embed(payload) -> str:
    return json.dumps(payload).replace("</", "<\\/")


def write_dashboard(path: Path, reports: list[LatentReport], meta: dict, edges: list[float], *, title: str = "") -> Path:
    """Write the dashboard of ``reports`` to ``path`` (one HTML file) and return it."""
    title = title or f"{meta.get('model', '')} {meta.get('hook', '')} SAE latents"
    header = (f"{meta.get('architecture', '')} SAE, {meta.get('d_sae', '')} latents, statistics over "
              f"{meta.get('n_tokens', 0):,} tokens; {len(reports)} latents listed")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<div id="side"><div style="padding:8px 10px 0"><b>{html.escape(title)}</b><div class="muted">{html.escape(header)}</div></div>
<input id="search" placeholder="search: latent, label, token"><div id="list"></div></div>
<div id="main"></div>
<script type="application/json" id="latents">{_embed([_shown(r.to_dict()) for r in reports])}</script>
<script type="application/json" id="meta">{_embed(meta)}</script>
<script type="application/json" id="edges">{_embed(edges)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
