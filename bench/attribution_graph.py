"""Benchmark: attribution graphs on the bundled model (30 layers, 30 transcoders).

- Time and peak memory (RSS of a fresh process) per prompt length, rows for the logits and
  ``--max-features`` features, with the transcoders of ``--transcoders`` (a folder
  load_transcoders reads, e.g. runs/tc/transcoders) or, without one, random TopK transcoders
  of the same shape (d_sae 2304, k 32: as many active features per token as trained ones).
- Batched rows vs the naive way, at the shortest length: a forward and a backward per row
  against one kept forward of ``--batch-size`` copies and that many rows per backward (rows/s,
  the same rows).

- ``--peer``: against circuit-tracer (where ``.venv-peers`` has it, `bench/peers/attribution_peers.py`)
  on the same random TopK transcoders (d_sae 256, k 8, saved in its layout by
  `save_transcoders`) and the same 5-token prompt, every active feature: the largest difference
  between the two adjacency matrices (node orders lined up; position 0's error nodes left out:
  circuit-tracer drops position 0's MLP output, mechscope keeps it as error nodes), and the
  ratio of wall time and of peak memory.

    python bench/attribution_graph.py                       # lengths 16 32 64 128, 256 features
    python bench/attribution_graph.py --lengths 16,64,256,512 --max-features 1024
    python bench/attribution_graph.py --peer
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import mechscope as ms
from mechscope.data.corpora import wikipedia
from mechscope.graphs.attribution import _auto_batch, _clean_pass, _Tracer
from mechscope.paths import cache_path


def prompt_of(model: ms.HookedModel, n_tokens: int) -> torch.Tensor:
    text = " ".join(wikipedia()[:5])
    return model.to_tokens(text)[:, :n_tokens]


def transcoders_for(model: ms.HookedModel, folder: str | None) -> ms.TranscoderSet:
    return ms.load_transcoders(folder) if folder else ms.TranscoderSet.fresh(model, d_sae=2304, k=32, seed=0)


def one_length(args: argparse.Namespace) -> dict:
    model = ms.load("smollm2-135m")
    transcoders = transcoders_for(model, args.transcoders)
    tokens = prompt_of(model, args.one)
    start = time.perf_counter()
    graph = ms.attribution_graph(model, transcoders, tokens, max_features=args.max_features,
                                 batch_size=args.batch_size, progress=False)
    seconds = time.perf_counter() - start
    rows = int(graph.has_row.sum())
    return {"tokens": tokens.shape[1], "active": graph.n_active, "rows": rows, "seconds": seconds,
            "batch": args.batch_size or _auto_batch(model, tokens.shape[1]),
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def batched_vs_naive(args: argparse.Namespace) -> tuple[float, float]:
    """Rows/s of the same ``--naive-rows`` feature rows (the first active features, all layers):
    a fresh forward and backward per row (the naive way) vs one kept forward of
    ``batch_size`` copies and ``batch_size`` rows per backward."""
    model = ms.load("smollm2-135m")
    transcoders = transcoders_for(model, args.transcoders)
    tokens = prompt_of(model, min(int(x) for x in args.lengths.split(",")))
    layers, _, _, embed = _clean_pass(model, transcoders, tokens, True)
    targets = [("feature", l, int(p), transcoders[l].W_enc[:, int(f)].detach())
               for l, layer in enumerate(layers) for p, f in zip(layer.positions, layer.latents)]
    targets = targets[:: max(1, len(targets) // args.naive_rows)][: args.naive_rows]
    batch = args.batch_size or 32
    rates = {}
    for kind in ("naive", "batched", "naive", "batched"):  # interleaved: the second of each counts
        start = time.perf_counter()
        if kind == "naive":
            for target in targets:
                _Tracer(model, transcoders, tokens, layers, embed, 1).rows([target])
        else:
            tracer = _Tracer(model, transcoders, tokens, layers, embed, batch)
            for first in range(0, len(targets), batch):
                tracer.rows(targets[first : first + batch])
        rates[kind] = len(targets) / (time.perf_counter() - start)
    return rates["naive"], rates["batched"]


PEERS = Path(__file__).resolve().parents[1] / ".venv-peers" / "bin" / "python"


def against_circuit_tracer() -> None:
    """The ``--peer`` comparison (see the module docstring)."""
    folder = Path(tempfile.mkdtemp(prefix="mechscope-ct-"))
    model = ms.load("smollm2-135m")
    transcoders = ms.TranscoderSet.fresh(model, d_sae=256, k=8, seed=0, model_name="smollm2-135m")
    ms.save_transcoders(transcoders, folder / "transcoders")
    tokens = model.to_tokens("The capital of France is")
    torch.save(tokens, folder / "tokens.pt")
    start = time.perf_counter()
    ours = ms.attribution_graph(model, transcoders, tokens, max_logits=3, batch_size=16, progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    command = [str(PEERS), str(Path(__file__).parent / "peers" / "attribution_peers.py"), str(folder / "peer.pt"),
               "--model", str(cache_path("models", "smollm2-135m")), "--transcoders", str(folder / "transcoders"),
               "--tokens", str(folder / "tokens.pt"), "--shim-dir", str(folder / "shim")]
    run = subprocess.run(command, capture_output=True, text=True, check=False,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if run.returncode:
        print(f"circuit-tracer did not run (make bench-peers installs it):\n{run.stderr[-2000:]}")
        return
    peer = torch.load(folder / "peer.pt", weights_only=False)
    n_pos, n_layers = ours.n_pos, ours.n_layers
    features = peer["active_features"][peer["selected_features"]]
    ours_of = torch.tensor([ours.feature_node(*f) for f in features.tolist()])
    n_f = len(ours_of)
    order = torch.cat([ours_of, torch.arange(ours.first_error, ours.n_nodes)])  # peer node i -> our node
    assert torch.equal(peer["logit_tokens"], ours.logit_tokens), (peer["logit_tokens"], ours.logit_tokens)
    theirs, mine = peer["adjacency_matrix"], ours.adjacency[order][:, order]
    first_errors = n_f + torch.arange(n_layers) * n_pos  # position 0's error node of each layer
    columns = torch.ones(theirs.shape[1], dtype=torch.bool)
    columns[first_errors] = False
    difference = (theirs[:, columns] - mine[:, columns]).abs().max()
    scale = mine[:, columns].abs().max()
    print(f"circuit-tracer {peer['versions'].get('circuit-tracer')} ({peer['backend']}) vs mechscope, "
          f"{n_pos} tokens, {n_f} features, adjacency {tuple(theirs.shape)}:")
    print(f"  max |difference| {float(difference):.2e} (largest edge {float(scale):.2f}); "
          f"position-0 error edges: mechscope {int((mine[:, first_errors] != 0).sum())}, "
          f"circuit-tracer {int((theirs[:, first_errors] != 0).sum())}")
    document = ours.prune().save_frontend(folder / "frontend", "capital")
    check = ("import sys; from circuit_tracer.frontend.graph_models import Model; "
             "m = Model.model_validate_json(open(sys.argv[1]).read()); print(len(m.nodes), len(m.links))")
    valid = subprocess.run([str(PEERS), "-c", check, str(document)], capture_output=True, text=True, check=False)
    verdict = (f"validates ({valid.stdout.split()[0]} nodes, {valid.stdout.split()[1]} links)" if not valid.returncode
               else f"does not validate: {valid.stderr[-500:]}")
    print(f"  mechscope's frontend JSON of the pruned graph against circuit-tracer's graph model: {verdict}")
    print(f"  wall time: mechscope {seconds:.1f} s, circuit-tracer {peer['seconds']:.1f} s "
          f"({peer['seconds'] / seconds:.2f}x); peak RSS: mechscope {peak:.2f} GiB, circuit-tracer "
          f"{peer['peak_rss_gib']:.2f} GiB ({peer['peak_rss_gib'] / peak:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16,32,64,128")
    parser.add_argument("--max-features", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None, help="default: attribution_graph's choice")
    parser.add_argument("--naive-rows", type=int, default=128)
    parser.add_argument("--transcoders", default=None)
    parser.add_argument("--peer", action="store_true", help="only the comparison with circuit-tracer")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        against_circuit_tracer()
        return
    if args.one is not None:
        print(json.dumps(one_length(args)))
        return
    which = args.transcoders or "random TopK transcoders, d_sae 2304, k 32"
    print(f"attribution graphs on smollm2-135m ({which}); rows: the logits and {args.max_features} features; "
          f"threads {torch.get_num_threads()}")
    print(f"{'tokens':>7} {'active':>8} {'rows':>6} {'batch':>6} {'seconds':>8} {'rows/s':>7} {'peak GiB':>9}")
    for length in (int(x) for x in args.lengths.split(",")):
        command = [sys.executable, __file__, "--one", str(length), "--max-features", str(args.max_features)]
        command += (["--batch-size", str(args.batch_size)] if args.batch_size else []) + \
            (["--transcoders", args.transcoders] if args.transcoders else [])
        run = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{row['tokens']:>7} {row['active']:>8} {row['rows']:>6} {row['batch']:>6} {row['seconds']:>8.1f} "
              f"{row['rows'] / row['seconds']:>7.1f} {row['peak_gib']:>9.2f}")
    naive, batched = batched_vs_naive(args)
    print(f"rows/s at {min(int(x) for x in args.lengths.split(','))} tokens ({args.naive_rows} feature rows of every "
          f"layer): a forward and a backward per row {naive:.1f}, one kept forward and {args.batch_size or 32} rows per "
          f"backward {batched:.1f}: {batched / naive:.1f}x")


if __name__ == "__main__":
    main()
