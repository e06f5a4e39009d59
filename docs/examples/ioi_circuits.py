"""IOI circuits on the bundled model: EAP and EAP-IG-inputs edge scores, faithfulness curves
(MIB circuit track), the heads of the smallest faithful circuit. Prints what docs/circuits.md shows."""

import time

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
    model(pairs.clean)
    forward = time.perf_counter() - start

results = {}
for name, options in (("EAP", {}), ("EAP-IG-inputs", {"steps": 5})):
    start = time.perf_counter()
    scores = C.attribute(model, pairs, method=name, **options)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    curve = C.faithfulness(model, pairs, scores, variants_per_pass=4)
    results[name] = (scores, curve)
    print(f"\n{scores.summary()}: {seconds:.1f} s ({seconds / forward:.1f} plain forwards); "
          f"faithfulness {time.perf_counter() - start:.1f} s")
    print(scores.top(5)[["edge", "score"]].to_string(index=False))
    print(curve.table()[["ranking", "CPR", "CPR_low", "CPR_high", "CMD", "CMD_low", "CMD_high"]]
          .round(3).to_string(index=False))

scores, curve = results["EAP-IG-inputs"]
frame = curve.to_dataframe()
print("\nEAP-IG-inputs faithfulness by % of edges:")
table = frame.pivot(index="percent", columns="ranking", values="faithfulness")[["signed", "absolute", "random"]]
print(table.round(3).to_string())
faithful = frame[frame.ranking.isin(["signed", "absolute"]) & (frame.faithfulness >= 0.8)].sort_values("n_edges")
smallest = faithful.iloc[0]
circuit = scores.top_n(int(smallest.n_edges), absolute=smallest.ranking == "absolute", prune=True)
heads = circuit.heads()
print(f"\nsmallest circuit with f >= 0.8: {smallest.ranking} ranking, {smallest.percent:g}% = {int(smallest.n_edges)} "
      f"edges (f = {smallest.faithfulness:.3f}); after pruning {circuit.n_edges} edges, {len(heads)} heads")
into_logits = circuit.to_dataframe().query("dst == 'logits' and src.str.startswith('a')")
into_logits = into_logits.reindex(into_logits.score.abs().sort_values(ascending=False).index)
print("heads writing to the logits, by |score|:", ", ".join(f"{h} ({v:+.1f})" for h, v in
                                                         zip(into_logits.src.head(8), into_logits.score.head(8))))
patching = ["a23.h3", "a29.h1", "a24.h4", "a29.h0", "a23.h0", "a23.h2"]  # docs/patching.md's top heads
print("activation patching's top 6 heads in the circuit:", [h for h in patching if h in heads])
C.save_pt(circuit, "/tmp/ioi_circuit.pt")
C.save_json(circuit, "/tmp/ioi_circuit.json")
C.save_dot(circuit, "/tmp/ioi_circuit.dot")
