"""ACDC on IOI on the bundled model: the circuit, its cost, and its faithfulness on held-out
prompts next to EAP-IG's circuit of the same size. Prints what docs/circuits.md shows.

    python docs/examples/ioi_acdc.py [n_prompts] [tau] [--absolute]   # defaults 8, 0.02; hours on 2 CPU cores

The metric is the logit difference, one-sided unless --absolute (see docs/circuits.md: one-sided,
the circuit drifts above the clean model). The walk checkpoints to /tmp/mechscope-ioi-acdc-*
every 1000 edges: an interrupted run resumes there.
"""

import sys
import time

import torch

import mechscope as ms
import mechscope.circuits as C

args = [a for a in sys.argv[1:] if a != "--absolute"]
absolute = "--absolute" in sys.argv
n_prompts = int(args[0]) if args else 8
tau = float(args[1]) if len(args) > 1 else 0.02
model = ms.load("smollm2-135m")
everything = ms.ioi(model, 16)  # the same 16 prompts as docs/examples/ioi_circuits.py
pairs = ms.ioi(model, n_prompts)  # their first n_prompts (same seed): ACDC's prompts
graph = C.Graph.from_model(model)
with torch.no_grad():
    clean = ms.logit_diff(model(pairs.clean), pairs).mean()
    corrupted = ms.logit_diff(model(pairs.corrupted), pairs).mean()
print(f"{n_prompts} prompts: clean logit difference {clean:.3f}, corrupted {corrupted:.3f}; tau = {tau:g}")

start = time.perf_counter()
circuit = C.acdc(model, pairs, tau, ms.logit_diff, absolute=absolute, resume=True,
                 out=f"/tmp/mechscope-ioi-acdc-{n_prompts}-{tau:g}{'-absolute' if absolute else ''}")
seconds = time.perf_counter() - start
print(f"\n{circuit.selection}")
mlps = [n for n, on in zip(graph.src_names, circuit.nodes_in_graph.tolist()) if on and n.startswith("m")]
print(f"ACDC: {circuit.n_edges} edges of {graph.n_edges} ({100 * circuit.n_edges / graph.n_edges:.2f}%), "
      f"{len(circuit.heads())} heads, {len(mlps)} MLPs; {seconds / 60:.1f} min "
      "(of this process: a resumed run counts only its own part)")
print("heads:", ", ".join(circuit.heads()))

eap_ig = C.attribute(model, everything, method="EAP-IG-inputs", steps=5)
same_size = eap_ig.top_n(circuit.n_edges, absolute=True)
empty = torch.zeros_like(graph.real)
for name, prompts in (("ACDC's prompts", pairs), ("all 16 prompts", everything)):
    values, full = C.evaluate_circuits(model, graph, prompts, ms.logit_diff,
                                       [circuit.in_graph, same_size.in_graph, empty])
    base = values[2].mean()
    f = [(v.mean() - base) / (full.mean() - base) for v in values[:2]]
    print(f"faithfulness on {name}: ACDC {f[0]:.3f}, EAP-IG-inputs top {circuit.n_edges} edges {f[1]:.3f}")
patching = ["a23.h3", "a29.h1", "a24.h4", "a29.h0", "a23.h0", "a23.h2"]  # docs/patching.md's top heads
print("activation patching's top 6 heads in the ACDC circuit:", [h for h in patching if h in circuit.heads()])
