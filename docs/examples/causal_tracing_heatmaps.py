"""Writes docs/figures/causal-tracing.html: ROME's three causal-tracing heatmaps for one fact
on the bundled model. Run from the repository root: ``python docs/examples/causal_tracing_heatmaps.py``
(about a minute on 2 CPU cores)."""

from __future__ import annotations

import html
import time
from pathlib import Path

import mechscope as ms
from mechscope.causal.tracing import causal_trace
from mechscope.data.facts import make_fact

TEXT, SUBJECT, ATTRIBUTE = "The Eiffel Tower is located in the city of", "Eiffel Tower", "Paris"
FIGURES = Path(__file__).resolve().parents[1] / "figures"


def main() -> None:
    model = ms.load("smollm2-135m")
    fact = make_fact(model, TEXT, SUBJECT, ATTRIBUTE)
    start = time.perf_counter()
    trace = causal_trace(model, fact)  # defaults: 10 noise samples of 3x the embedding std, window 10
    seconds = time.perf_counter() - start
    for kind in trace.scores:
        layer, pos, prob = trace.peak(kind)
        print(f"{kind}: peak at layer {layer}, token {pos} {trace.str_tokens[pos]!r}, p={prob:.3f}")
    print(f"clean {trace.clean_prob:.3f}, corrupted {trace.corrupted_prob:.3f}, {seconds:.0f} s")
    description = (
        f"Causal tracing of {html.escape(repr(TEXT))} &rarr; {html.escape(repr(trace.attribute))} on SmolLM2-135M, "
        f"subject {html.escape(repr(SUBJECT))} noised ({trace.n_samples} samples, noise std {trace.noise_std:.3f}). "
        "Each cell: the indirect effect (probability of the attribute token at the last position minus the noised "
        "run's) when the clean activation of that token (row) and layer (column) is restored; hover for the "
        "probability. Subject tokens are marked *. Made by docs/examples/causal_tracing_heatmaps.py.")
    path = ms.viz.write_html(trace.plot(), FIGURES / "causal-tracing.html", plotlyjs="directory", description=description)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
