"""``mechscope transcoders train | eval | graph``: a transcoder for every layer of a model, trained from
one streaming harvest (`graphs.training`), saved in circuit-tracer's layout, and evaluated.

    mechscope transcoders train --model smollm2-135m --d-sae 2304 --k 32 --tokens 2M --out runs/tc
    mechscope transcoders eval --transcoders runs/tc/transcoders
    mechscope transcoders graph --transcoders runs/tc/transcoders --prompt "The capital of France is" --out graphs/

A run folder holds ``checkpoint.safetensors`` (resume with ``--resume``: finished steps are
skipped, not re-run), ``transcoders/`` (circuit-tracer layout, `graphs.formats`) and
``eval.json`` (per-layer FVE and L0, the replacement model's CE and KL on the held-out
windows). The data options are those of ``mechscope sae`` (`sae.commands.add_data_options`).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path

from ..errors import ArgumentError
from ..sae.commands import add_data_options, check_folder, check_ranges, parse_count


def add_parsers(sub: argparse._SubParsersAction, parents: tuple[argparse.ArgumentParser, ...] = ()) -> None:
    """The ``transcoders`` command and its subcommands (builds without importing torch)."""
    group = sub.add_parser("transcoders", help="train and evaluate a transcoder for every layer (attribution graphs)",
                           parents=list(parents))
    steps = group.add_subparsers(dest="transcoders_command", required=True)
    train = add_data_options(steps.add_parser("train", help="train every layer's transcoder from one streaming "
                                              "harvest (resumable)", parents=list(parents)))
    train.add_argument("--arch", default="topk", help="topk (default), batchtopk, relu, jumprelu, ...")
    train.add_argument("--k", type=int, default=32, help="active latents per token (topk, batchtopk)")
    train.add_argument("--d-sae", type=int, required=True)
    train.add_argument("--skip-connection", action="store_true")
    train.add_argument("--tokens", type=parse_count, required=True, help="training tokens (per layer)")
    train.add_argument("--windows-per-step", type=int, default=32, help="windows harvested per step (the batch)")
    train.add_argument("--forward-batch", type=int, default=8, help="windows per forward pass")
    train.add_argument("--lr", type=float, default=5e-4)
    train.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                       help="train at mean norm sqrt(d), folded into the weights (default on)")
    train.add_argument("--autocast", action="store_true", help="bf16 matmuls (fp32 weights and Adam state)")
    train.add_argument("--checkpoint-every", type=int, default=50)
    train.add_argument("--outlier-ratio", type=float, default=10.0)
    train.add_argument("--out", required=True, help="the run folder")
    train.add_argument("--resume", action="store_true")
    evaluate = add_data_options(steps.add_parser("eval", help="per-layer FVE and the replacement model's CE / KL",
                                                 parents=list(parents)))
    evaluate.add_argument("--transcoders", required=True, help="a folder load_transcoders reads")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--out", default=None, help="write the metrics as JSON here")
    graph = add_data_options(steps.add_parser("graph", help="the attribution graph of a prompt, pruned, as the "
                                              "attribution-graphs frontend's JSON", parents=list(parents)))
    graph.add_argument("--transcoders", required=True, help="a folder load_transcoders reads")
    graph.add_argument("--prompt", required=True)
    graph.add_argument("--slug", default="graph", help="the graph's name in the frontend")
    graph.add_argument("--max-features", type=int, default=1024)
    graph.add_argument("--max-logits", type=int, default=10)
    graph.add_argument("--batch-size", type=int, default=32)
    graph.add_argument("--node-threshold", type=float, default=0.8)
    graph.add_argument("--edge-threshold", type=float, default=0.98)
    graph.add_argument("--label-windows", type=int, default=256,
                       help="corpus windows to label the kept features from (0: no labels)")
    graph.add_argument("--out", required=True, help="the frontend folder (<slug>.json, graph-metadata.json)")


def run(args: argparse.Namespace) -> None:
    """Run ``mechscope transcoders <step>``."""
    check_ranges(args)
    for option in ("windows_per_step", "forward_batch"):
        if getattr(args, option, 1) < 1:
            raise ArgumentError(f"--{option.replace('_', '-')} must be at least 1")
    if args.transcoders_command == "train":
        check_folder(args.out, "--out")
        if args.k > args.d_sae:
            raise ArgumentError(f"--k {args.k} is more than --d-sae {args.d_sae}")
        _train(args)
    elif args.transcoders_command == "graph":
        check_folder(args.out, "--out")
        for option in ("node_threshold", "edge_threshold"):
            if not 0 < getattr(args, option) <= 1:
                raise ArgumentError(f"--{option.replace('_', '-')} must be in (0, 1]")
        _graph(args)
    else:
        _eval(args)


def _train(args: argparse.Namespace) -> None:
    from ..sae.commands import load_model, split_windows, start_distributed
    from ..sae.train import TrainConfig
    from .evaluate import evaluate_transcoders
    from .formats import save_transcoders
    from .training import train_transcoders
    from .transcoders import TranscoderSet

    rank, world = start_distributed()
    model = load_model(args)
    windows, held_out = split_windows(args, model)
    per_step = args.windows_per_step * (args.context_size - 1)
    steps = math.ceil(args.tokens / per_step)
    config = TrainConfig(steps=steps, lr=args.lr, normalize=args.normalize, autocast=args.autocast,
                         checkpoint_every=args.checkpoint_every, seed=args.seed,
                         warmup_steps=min(100, max(1, steps // 20)), sparsity_warmup_steps=min(100, max(1, steps // 20)),
                         dead_window_tokens=min(10_000_000, max(per_step, args.tokens // 5)))
    transcoders = TranscoderSet.fresh(model, args.d_sae, architecture=args.arch, k=args.k,
                                      skip_connection=args.skip_connection, seed=args.seed, model_name=args.model)
    if rank == 0:
        print(f"training {len(transcoders)} {args.arch} transcoders (d_sae={args.d_sae}) on about {steps * per_step:,} "
              f"tokens: {steps} steps of {args.windows_per_step} windows x {args.context_size} tokens "
              f"({len(windows):,} windows available, {world} process(es))")
    train_transcoders(model, transcoders, windows, config, windows_per_step=args.windows_per_step,
                      forward_batch=args.forward_batch, outlier_ratio=args.outlier_ratio, out=args.out,
                      resume=args.resume)
    if rank == 0:
        out = Path(args.out)
        save_transcoders(transcoders, out / "transcoders", model_name=args.model)
        result = evaluate_transcoders(model, transcoders, held_out, outlier_ratio=args.outlier_ratio)
        metrics = _metrics(result)
        (out / "eval.json").write_text(json.dumps({**metrics, "train": asdict(config)}, indent=2))
        print(f"saved {out / 'transcoders'} (circuit-tracer layout); {result.summary()}")


def _eval(args: argparse.Namespace) -> None:
    from ..sae.commands import load_model, split_windows
    from .evaluate import evaluate_transcoders
    from .formats import load_transcoders

    model = load_model(args)
    transcoders = load_transcoders(args.transcoders).check(model)
    _, held_out = split_windows(args, model)
    result = evaluate_transcoders(model, transcoders, held_out, batch_size=args.batch_size)
    print(result.to_dataframe().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(result.summary())
    if args.out:
        Path(args.out).write_text(json.dumps(_metrics(result), indent=2))


def _graph(args: argparse.Namespace) -> None:
    from ..sae.commands import load_model, split_windows
    from .attribution import attribution_graph
    from .formats import load_transcoders
    from .labels import feature_labels

    model = load_model(args)
    transcoders = load_transcoders(args.transcoders).check(model)
    graph = attribution_graph(model, transcoders, args.prompt, max_logits=args.max_logits,
                              max_features=args.max_features, batch_size=args.batch_size)
    pruned = graph.prune(args.node_threshold, args.edge_threshold)
    labels = {}
    if args.label_windows:
        windows, _ = split_windows(args, model)
        kept = pruned.feature_index[pruned.kept[: pruned.n_features]][:, [0, 2]]
        if len(kept):
            labels = feature_labels(model, transcoders, windows[: args.label_windows], kept)
    path = pruned.save_frontend(args.out, args.slug, prompt=args.prompt, labels=labels,
                                node_threshold=args.node_threshold)
    scores = graph.scores()
    print(f"{pruned.summary()}; replacement {scores['replacement']:.3f}, completeness {scores['completeness']:.3f}")
    print(f"wrote {path}")


def _metrics(result) -> dict:
    return {"n_tokens": result.n_tokens, "fve": result.fve.tolist(), "l0": result.l0.tolist(),
            "dead_fraction": result.dead_fraction.tolist(), "ce_clean": result.ce_clean,
            "ce_replaced": result.ce_replaced, "kl_replaced": result.kl_replaced,
            "ce_with_errors": result.ce_with_errors, "kl_with_errors": result.kl_with_errors}
