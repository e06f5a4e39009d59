"""Peer rows for bench/circuits.py, run inside .venv-peers (never imported by mechscope).

TransformerLens 4's edge attribution patching (``transformer_lens.tools.analysis.
attribution_patching.attribution_patch`` with ``EdgeAttributionConfig(granularity="edge")``)
on a GPT-2-architecture model saved in Hugging Face format, loaded offline as a
``TransformerBridge`` (no weight processing). The metric is the logit difference at the last
position, ``logit[answer] - logit[wrong]``, averaged over the prompts.

.venv-peers holds TransformerLens 3.9 (sae-lens pins ``transformer-lens<4``), whose
``attribution_patch`` refuses ``granularity="edge"``; TransformerLens 4 sits beside it in
``.venv-peers/tl4`` (``pip install --no-deps --target .venv-peers/tl4 transformer-lens==4.3.0``:
every dependency of 4.3.0 is already in .venv-peers) and is put first on ``sys.path`` here.

Inputs: ``--model DIR`` (``save_pretrained`` output, no tokenizer needed) and ``--pairs P.pt``
(``torch.save``'d dict: ``clean``, ``corrupted`` ``[batch, pos]`` int64, ``answers``,
``wrong`` ``[batch]``). Output ``--out O.pt``: TransformerLens's graph, position-resolved::

    writers:  ["embed", "attn_head_out[l,h]", "mlp_out[l]", ...]       (TL Node kinds)
    readers:  ["q_input[l,h]", "k_input[l,h]", "v_input[l,h]", "mlp_in[l]", "logits[L-1]"]
    edges:    [(writer, reader), ...]   the real edges, one position's worth
    per_position: [pos, n_edges] float64  TL's edge scores at each position
    scores:   [n_edges]  per_position summed over positions (the position-free EAP score)

TL scores an edge ``(a_clean[u] - a_corrupt[u]) . d metric / d input(v)`` with the gradient
taken on the *corrupted* run, per prompt, averaged over prompts; its edges are same-position
(writer at p -> reader at p; a k/v input's gradient at p already sums over the queries that
read it), so the sum over positions is Syed et al.'s EAP score (with TL's sign and gradient
point). The last stdout line is JSON: timings (median of ``--repeats``), one plain batched
forward's time, peak RSS rise and the edge counts.

    .venv-peers/bin/python bench/peers/circuits_peers.py --model DIR --pairs P.pt --out O.pt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

TL4 = Path(os.environ.get("MECHSCOPE_TL4", Path(sys.prefix) / "tl4"))
if (TL4 / "transformer_lens").is_dir():
    sys.path.insert(0, str(TL4))

import torch


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def tl_name(node) -> str:
    """A TransformerLens Node without its position: ``kind`` or ``kind[layer]`` or ``kind[layer,head]``."""
    if node.layer is None:
        return node.kind
    if node.head is None:
        return f"{node.kind}[{node.layer}]"
    return f"{node.kind}[{node.layer},{node.head}]"


def load_bridge(model_dir: str):
    import transformer_lens
    from transformer_lens.model_bridge import TransformerBridge

    version = metadata.version("transformer-lens")  # the first on sys.path: tl4's when present
    if not version.startswith("4"):
        print(f"warning: transformer_lens {version} from {transformer_lens.__file__}; edge EAP needs 4.x",
              file=sys.stderr)
    bridge = TransformerBridge.boot_transformers(model_dir, device="cpu", dtype=torch.float32)
    bridge.eval()
    return bridge, f"{version} ({Path(transformer_lens.__file__).parent})"


def tl_eap(bridge, pairs: dict):
    """TL's edge scores, mean over prompts. ``attribution_patch``'s ``metric_fn`` sees one
    prompt's logits and not its index, so prompts with their own answers go one call each
    (TL loops over prompts one at a time internally anyway, and averages)."""
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    config = EdgeAttributionConfig(granularity="edge")
    total: dict = {}
    batch = len(pairs["answers"])
    for i in range(batch):
        answer, wrong = int(pairs["answers"][i]), int(pairs["wrong"][i])

        def metric(logits: torch.Tensor, answer=answer, wrong=wrong) -> torch.Tensor:
            return logits[0, -1, answer] - logits[0, -1, wrong]

        result = attribution_patch(bridge, pairs["clean"][i:i + 1], pairs["corrupted"][i:i + 1], metric, config)
        for edge, score in result.edge_scores.items():
            total[edge] = total.get(edge, 0.0) + score
    return {edge: value / batch for edge, value in total.items()}


def tabulate(edge_scores: dict, seq: int) -> dict:
    """Position-resolved dict -> name tables and ``[pos, n_edges]`` / ``[n_edges]`` tensors."""
    edges: list[tuple[str, str]] = []
    index: dict[tuple[str, str], int] = {}
    for (writer, reader) in edge_scores:
        if writer.position != 0:
            continue
        key = (tl_name(writer), tl_name(reader))
        index[key] = len(edges)
        edges.append(key)
    per_position = torch.zeros(seq, len(edges), dtype=torch.float64)
    for (writer, reader), score in edge_scores.items():
        assert writer.position == reader.position, "TL's edges are same-position"
        per_position[writer.position, index[(tl_name(writer), tl_name(reader))]] = score
    writers = list(dict.fromkeys(w for w, _ in edges))
    readers = list(dict.fromkeys(r for _, r in edges))
    return {"writers": writers, "readers": readers, "edges": edges, "per_position": per_position,
            "scores": per_position.sum(0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="folder with a Hugging Face GPT-2 (save_pretrained)")
    parser.add_argument("--pairs", required=True, help="torch.save'd dict: clean, corrupted, answers, wrong")
    parser.add_argument("--out", required=True, help="output .pt (a .json with the timings is written beside it)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    args = parser.parse_args()

    pairs = torch.load(args.pairs, weights_only=True)
    batch, seq = pairs["clean"].shape
    bridge, source = load_bridge(args.model)
    rows = torch.arange(batch)

    def forward() -> torch.Tensor:
        with torch.no_grad():
            last = bridge(pairs["clean"])[:, -1]
        return last[rows, pairs["answers"]] - last[rows, pairs["wrong"]]

    # warm-up on one prompt, then the peak RSS rise of one full EAP run over the warmed model
    tl_eap(bridge, {k: v[:1] for k, v in pairs.items()})
    forward()
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kib("VmRSS")
    edge_scores = tl_eap(bridge, pairs)
    peak_mib = (_rss_kib("VmHWM") - base) / 1024

    eap_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        tl_eap(bridge, pairs)
        eap_times.append(time.perf_counter() - start)
    forward_times = []
    for _ in range(max(args.repeats, 5)):
        start = time.perf_counter()
        clean_metric = forward()
        forward_times.append(time.perf_counter() - start)

    table = tabulate(edge_scores, seq)
    with torch.no_grad():
        last = bridge(pairs["corrupted"])[:, -1]
    corrupted_metric = last[rows, pairs["answers"]] - last[rows, pairs["wrong"]]
    table.update(clean_metric=clean_metric.mean().item(), corrupted_metric=corrupted_metric.mean().item())
    torch.save(table, args.out)
    info = {"peer": "transformer_lens.tools.analysis.attribution_patching.attribution_patch (granularity='edge')",
            "transformer_lens": source, "eap_s": statistics.median(eap_times), "eap_all_s": eap_times,
            "forward_s": statistics.median(forward_times), "peak_rss_mib": peak_mib,
            "tokens": batch * seq, "edges": len(table["edges"]), "position_edges": len(edge_scores),
            "threads": torch.get_num_threads()}
    Path(args.out).with_suffix(".json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
