"""Automated circuit discovery: the component graph, edge interventions, EAP / EAP-IG edge
(and node) attribution, ACDC, edge pruning, circuit selection, MIB-style faithfulness, exports (see docs/circuits.md).

    scores = ms.circuits.attribute(model, pairs, method="EAP-IG-inputs", steps=5)
    circuit = scores.top_n(200)                      # or .threshold(tau), .greedy(n)
    curve = ms.circuits.faithfulness(model, pairs, scores)
    ms.circuits.save_pt(circuit, "circuit.pt")       # hannamw/EAP-IG's layout
"""

from .acdc import acdc, acdc_order
from .eap import METHODS, alphas, attribute, eap, eap_ig
from .exact import edge_patching
from .export import read_eap_ig, save_dot, save_json, save_pt, to_dot, to_eap_ig
from .faithfulness import PERCENTS, evaluate_circuits, faithfulness
from .graph import Graph
from .interventions import (
    ABLATIONS,
    CleanPrefix,
    EdgePatch,
    ablated_sources,
    buffer_bytes_per_token,
    patched_logits,
    pruned_weights,
    source_activations,
    start_layer,
)
from .plot import curves_figure
from .pruning import deterministic_gates, edge_pruning, open_probability, sample_gates
from .result import Circuit, CircuitScores, FaithfulnessCurve
from .selection import greedy, nodes_of, prune, threshold, top_n
from .spans import Spans

__all__ = [
    "ABLATIONS",
    "METHODS",
    "PERCENTS",
    "Circuit",
    "CircuitScores",
    "CleanPrefix",
    "EdgePatch",
    "FaithfulnessCurve",
    "Graph",
    "Spans",
    "ablated_sources",
    "acdc",
    "acdc_order",
    "alphas",
    "attribute",
    "buffer_bytes_per_token",
    "curves_figure",
    "deterministic_gates",
    "eap",
    "eap_ig",
    "edge_patching",
    "edge_pruning",
    "evaluate_circuits",
    "faithfulness",
    "greedy",
    "nodes_of",
    "open_probability",
    "patched_logits",
    "prune",
    "pruned_weights",
    "read_eap_ig",
    "sample_gates",
    "save_dot",
    "save_json",
    "save_pt",
    "source_activations",
    "start_layer",
    "threshold",
    "to_dot",
    "to_eap_ig",
    "top_n",
]
