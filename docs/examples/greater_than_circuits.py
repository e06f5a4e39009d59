"""Greater-than circuits on the bundled model (digit tokenizer; see docs/tasks.md): EAP and
EAP-IG-inputs edge scores with the paper's probability-difference metric and "01" corruption,
faithfulness curves, and the components of the smallest faithful circuit.
Prints what docs/circuits.md shows.

    python docs/examples/greater_than_circuits.py      # about 5 minutes on 2 CPU cores
"""

import time

import torch

import mechscope as ms
import mechscope.circuits as C
from mechscope.data.greater_than import greater_than, greater_than_prob_diff

torch.manual_seed(0)
model = ms.load("smollm2-135m")
task = greater_than(model, 16, seed=0)
pairs, metric = task.pairs, greater_than_prob_diff(task)
print(f"{len(pairs)} prompts of {pairs.clean.shape[1]} tokens ({task.mode} numbers), e.g. {pairs.clean_texts[0]!r}")

with torch.no_grad():
    model(pairs.clean)
    start = time.perf_counter()
    for _ in range(3):
        model(pairs.clean)
    forward = (time.perf_counter() - start) / 3

results = {}
for name, options in (("EAP", {}), ("EAP-IG-inputs", {"steps": 5})):
    start = time.perf_counter()
    scores = C.attribute(model, pairs, metric, method=name, **options)
    seconds = time.perf_counter() - start
    curve = C.faithfulness(model, pairs, scores, metric, variants_per_pass=4)
    results[name] = (scores, curve)
    print(f"\n{scores.summary()}: {seconds:.1f} s ({seconds / forward:.1f} plain forwards)")
    print(f"clean metric {scores.clean_metric:.3f}, corrupted {scores.corrupted_metric:.3f}")
    print(scores.top(5)[["edge", "score"]].to_string(index=False))
    print(curve.table()[["ranking", "CPR", "CPR_low", "CPR_high", "CMD", "CMD_low", "CMD_high"]]
          .round(3).to_string(index=False))

scores, curve = results["EAP-IG-inputs"]
frame = curve.to_dataframe()
print("\nEAP-IG-inputs faithfulness by % of edges:")
print(frame.pivot(index="percent", columns="ranking", values="faithfulness")[["signed", "absolute", "random"]]
      .round(3).to_string())
faithful = frame[frame.ranking.isin(["signed", "absolute"]) & (frame.faithfulness >= 0.8)].sort_values("n_edges")
smallest = faithful.iloc[0]
circuit = scores.top_n(int(smallest.n_edges), absolute=smallest.ranking == "absolute", prune=True)
edges = circuit.to_dataframe()
print(f"\nsmallest circuit with f >= 0.8: {smallest.ranking} ranking, {smallest.percent:g}% = {int(smallest.n_edges)} "
      f"edges (f = {smallest.faithfulness:.3f}); after pruning {circuit.n_edges} edges, {len(circuit.heads())} heads")
weight = edges.assign(w=edges.score.abs()).groupby("src").w.sum().sort_values(ascending=False)
print("components by sum |score| of their out-edges:",
      ", ".join(f"{n} ({v:.2f})" for n, v in weight.head(10).items()))
mlp = weight[weight.index.str.startswith("m")].sum() / weight.sum()
print(f"MLPs' share of that weight: {mlp:.2f}; MLPs in the circuit: "
      f"{sorted((n for n in weight.index if n.startswith('m')), key=lambda n: int(n[1:]))}")
into_logits = edges.query("dst == 'logits'")
into_logits = into_logits.reindex(into_logits.score.abs().sort_values(ascending=False).index)
print("writers to the logits, by |score|:", ", ".join(f"{s} ({v:+.3f})" for s, v in
                                                    zip(into_logits.src.head(8), into_logits.score.head(8))))
