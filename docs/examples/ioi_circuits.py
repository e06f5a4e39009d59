"""IOI circuits on the bundled model: EAP, EAP-IG-inputs and edge pruning, their faithfulness
curves (MIB circuit track) on one plot, position-aware EAP-IG, the heads of the smallest faithful
circuit, a runtime table, and what ACDC would cost here. Prints what docs/circuits.md shows.

    python docs/examples/ioi_circuits.py          # about 20 minutes on 2 CPU cores

Edge pruning checkpoints to /tmp/mechscope-ioi-pruning: an interrupted run resumes there.
"""

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import mechscope as ms
import mechscope.circuits as C

torch.manual_seed(0)
model = ms.load("smollm2-135m")
pairs = ms.ioi(model, 16)  # template 0, ABC corruption; metric: logit difference
graph = C.Graph.from_model(model)
print(f"graph: {graph.n_src} sources, {graph.n_dst} destinations, {graph.n_edges} real edges")
print(f"difference buffer: {C.buffer_bytes_per_token(graph, with_ablated=False):,} B/token fp32, "
      f"{C.buffer_bytes_per_token(graph, torch.bfloat16, with_ablated=False):,} B/token bf16")

with torch.no_grad():
    model(pairs.clean)  # warm-up
    start = time.perf_counter()
    for _ in range(3):
        model(pairs.clean)
    forward = (time.perf_counter() - start) / 3
print(f"one plain forward of the 16 prompts: {forward:.2f} s")

runs = {
    "EAP": lambda: C.attribute(model, pairs, method="EAP"),
    "EAP-IG-inputs": lambda: C.attribute(model, pairs, method="EAP-IG-inputs", steps=5),
    "edge pruning": lambda: C.edge_pruning(model, pairs, sparsity=0.98, steps=200, batch_size=8,
                                           out="/tmp/mechscope-ioi-pruning", resume=True, progress=False),
}
results, timing = {}, {}
for name, run in runs.items():
    start = time.perf_counter()
    scores = run()
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    curve = C.faithfulness(model, pairs, scores, variants_per_pass=4)
    timing[name] = (seconds, time.perf_counter() - start)
    results[name] = (scores, curve)
    print(f"\n{scores.summary()}")
    print(scores.top(5)[["edge", "score"]].to_string(index=False))
    print(curve.table()[["ranking", "CPR", "CPR_low", "CPR_high", "CMD", "CMD_low", "CMD_high"]]
          .round(3).to_string(index=False))

learned = results["edge pruning"][0].threshold(0.0)
values, clean = C.evaluate_circuits(model, graph, pairs, ms.logit_diff, [learned.in_graph, torch.zeros_like(graph.real)])
f = (values[0].mean() - values[1].mean()) / (clean.mean() - values[1].mean())
print(f"\nedge pruning's learned circuit (gates > 0.5): {learned.n_edges} edges "
      f"({100 * learned.n_edges / graph.n_edges:.2f}%), {len(learned.heads())} heads, f = {f:.3f}")

scores, curve = results["EAP-IG-inputs"]
frame = curve.to_dataframe()
print("\nfaithfulness by % of edges (absolute ranking; signed for EAP-IG-inputs):")
table = {name: r[1].to_dataframe().query("ranking == 'absolute'").set_index("percent").faithfulness
         for name, r in results.items()}
table["EAP-IG signed"] = frame.query("ranking == 'signed'").set_index("percent").faithfulness
table["random"] = frame.query("ranking == 'random'").set_index("percent").faithfulness
print(pd.DataFrame(table).round(3).to_string())
faithful = frame[frame.ranking.isin(["signed", "absolute"]) & (frame.faithfulness >= 0.8)].sort_values("n_edges")
smallest = faithful.iloc[0]
circuit = scores.top_n(int(smallest.n_edges), absolute=smallest.ranking == "absolute", prune=True)
heads = circuit.heads()
print(f"\nsmallest EAP-IG circuit with f >= 0.8: {smallest.ranking} ranking, {smallest.percent:g}% = "
      f"{int(smallest.n_edges)} edges (f = {smallest.faithfulness:.3f}); after pruning {circuit.n_edges} edges, "
      f"{len(heads)} heads")
into_logits = circuit.to_dataframe().query("dst == 'logits' and src.str.startswith('a')")
into_logits = into_logits.reindex(into_logits.score.abs().sort_values(ascending=False).index)
print("heads writing to the logits, by |score|:", ", ".join(f"{h} ({v:+.1f})" for h, v in
                                                         zip(into_logits.src.head(8), into_logits.score.head(8))))
patching = ["a23.h3", "a29.h1", "a24.h4", "a29.h0", "a23.h0", "a23.h2"]  # docs/patching.md's top heads
print("activation patching's top 6 heads in the circuit:", [h for h in patching if h in heads])
print("... in edge pruning's learned circuit:", [h for h in patching if h in learned.heads()])

# position-aware: the same EAP-IG scores split over the template's fields
spans = C.Spans.from_positions(pairs, ms.ioi_positions(pairs))
start = time.perf_counter()
by_span = C.attribute(model, pairs, method="EAP-IG-inputs", steps=5, spans=spans)
timing["EAP-IG-inputs, 5 spans"] = (time.perf_counter() - start, float("nan"))
share = by_span.scores.abs().sum((1, 2))
print("\nposition-aware EAP-IG: share of sum |score| by span:",
      ", ".join(f"{n} {v:.2f}" for n, v in zip(spans.names, (share / share.sum()).tolist())))
print(by_span.top(6)[["edge", "score"]].to_string(index=False))

# ACDC: the cost of one speculative step (8 edge removals in one forward, started at the
# destination's layer on the clean run, logits at the answer only), and of a full run
ablated = C.ablated_sources(model, graph, pairs.corrupted)
prefix = C.CleanPrefix(model, graph, pairs.clean, ablated)
step_at = {}
for layer in (0, 10, 20, 29):
    dst = graph.dst_names.index(f"a{layer}.h0<q>")
    masks = torch.stack([graph.real.clone() for _ in range(8)])
    for i in range(8):
        masks[i:, i, dst] = False
    W = C.pruned_weights(graph, masks)
    with torch.no_grad():
        C.patched_logits(model, graph, pairs.clean, ablated, W, logits_at=pairs.answer_positions[:, None], prefix=prefix)
        start = time.perf_counter()
        C.patched_logits(model, graph, pairs.clean, ablated, W, logits_at=pairs.answer_positions[:, None], prefix=prefix)
        step_at[layer] = time.perf_counter() - start
layers = sorted(step_at)
passes = [-(-d.prefix // 8) for d in graph.destinations]  # ceil(incoming edges / 8) per destination
seconds = np.interp([min(d.layer, 29) for d in graph.destinations], layers, [step_at[l] for l in layers])
estimate = float(np.dot(passes, seconds))
print("\nACDC: one forward testing 8 removals, started at the destination's layer: "
      + ", ".join(f"layer {l} {t:.2f} s" for l, t in step_at.items())
      + f"; a full run over all {graph.n_edges} edges needs at least {sum(passes)} "
      f"such forwards: about {estimate / 3600:.1f} h on this CPU")

print("\nruntime (2 CPU cores; x = multiples of one plain forward of the 16 prompts):")
for name, (seconds, faith) in timing.items():
    print(f"  {name:24s} scores {seconds:7.1f} s ({seconds / forward:6.1f} x)   faithfulness curve {faith:6.1f} s")

figure = C.curves_figure({name: r[1] for name, r in results.items()},
                         title="IOI on SmolLM2-135M: faithfulness of EAP, EAP-IG-inputs and edge-pruning circuits")
path = ms.viz.write_html(figure, Path(__file__).resolve().parents[1] / "figures" / "ioi-circuit-methods.html",
                         plotlyjs="directory", description="Faithfulness f(C) of the circuits of EAP, EAP-IG-inputs "
                         "(5 steps) and edge pruning (98% sparsity target, 200 steps) at 0.1-100 % of the edges, "
                         "absolute ranking, 16 IOI prompts, bootstrap 95 % intervals. Made by "
                         "docs/examples/ioi_circuits.py on SmolLM2-135M.")
print(f"\nwrote {path.name}")
C.save_pt(circuit, "/tmp/ioi_circuit.pt")
C.save_json(circuit, "/tmp/ioi_circuit.json")
C.save_dot(circuit, "/tmp/ioi_circuit.dot")
