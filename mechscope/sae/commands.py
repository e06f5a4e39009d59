"""``mechscope sae harvest | train | eval``: the activation cache, training and evaluation of an
SAE from the command line, each step resumable and reusing the previous one's files.

    mechscope sae train --model smollm2-135m --hook blocks.15.resid_post --arch topk --k 32 \\
        --d-sae 4608 --tokens 2M --out runs/x
    mechscope sae eval --sae runs/x/sae --model smollm2-135m

A run folder holds ``activations/`` (the shard cache, shared by every SAE trained from it),
``checkpoint.safetensors`` (resume with ``--resume``), ``sae/`` (SAELens layout) and
``eval.json``. The corpus is cut into windows of ``--context-size`` tokens, shuffled with
``--seed``; the last ``--eval-windows`` windows are held out of training for ``eval``. Every
step must be given the same data options (the activation cache refuses other windows).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import SelectionError
from .architectures import ARCHITECTURES, get_architecture
from .modules import SAE, SAEConfig

_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}


def parse_count(text: str) -> int:
    """``"2M"`` -> 2,000,000; ``"500k"``, ``"1.5m"``, ``"4096"``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMbB]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (use e.g. 4096, 500k, 2M)")
    return round(float(match.group(1)) * _SUFFIXES[match.group(2).lower()])


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``sae`` command and its subcommands."""
    sae = sub.add_parser("sae", help="harvest activations, train and evaluate SAEs and transcoders")
    steps = sae.add_subparsers(dest="sae_command", required=True)

    def data_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", default="smollm2-135m")
        parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                            help="the model's dtype while harvesting (activations are stored in it)")
        parser.add_argument("--corpus", default="wikipedia+python_stdlib",
                            help="'+'-joined corpora: wikipedia, python_stdlib, hf:<dataset>[:<split>:<column>], a file")
        parser.add_argument("--max-chars", type=parse_count, default=None,
                            help="read at most this many characters of each streamed (hf:) corpus; give every "
                                 "step the same value, so that they cut the same windows")
        parser.add_argument("--context-size", type=int, default=128)
        parser.add_argument("--eval-windows", type=int, default=256, help="windows held out of training")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default=None)

    harvest = steps.add_parser("harvest", help="fill an activation cache (resumable)")
    data_options(harvest)
    harvest.add_argument("--hook", required=True, action="append", help="activation name (repeatable)")
    harvest.add_argument("--tokens", type=parse_count, default=None, help="at most this many tokens")
    harvest.add_argument("--activations", required=True, help="cache folder")

    train = steps.add_parser("train", help="train an SAE or transcoder (harvesting first if needed)")
    data_options(train)
    train.add_argument("--hook", required=True, help="the activation the SAE reads")
    train.add_argument("--output-hook", default=None, help="transcoders: the activation reconstructed")
    train.add_argument("--skip-connection", action="store_true")
    train.add_argument("--arch", default="topk", choices=list(ARCHITECTURES))
    train.add_argument("--k", type=int, default=32)
    train.add_argument("--d-sae", type=int, required=True)
    train.add_argument("--tokens", type=parse_count, required=True, help="training tokens (the cache is reread if smaller)")
    train.add_argument("--batch-size", type=int, default=4096)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--l1-coefficient", type=float, default=None)
    train.add_argument("--l0-coefficient", type=float, default=None)
    train.add_argument("--normalize", action="store_true", help="train at mean norm sqrt(d), folded into the weights")
    train.add_argument("--autocast", action="store_true", help="bf16 matmuls (fp32 weights and Adam state)")
    train.add_argument("--dead-window", type=parse_count, default=None,
                       help="tokens without firing that make a latent dead (default: 10M or a fifth of --tokens)")
    train.add_argument("--checkpoint-every", type=int, default=200)
    train.add_argument("--outlier-ratio", type=float, default=10.0,
                       help="drop tokens whose norm is over this many times the median (attention-sink outliers)")
    train.add_argument("--activations", default=None, help="cache folder (default OUT/activations)")
    train.add_argument("--out", required=True)
    train.add_argument("--resume", action="store_true")

    evaluate = steps.add_parser("eval", help="evaluate a saved SAE on the held-out windows")
    data_options(evaluate)
    evaluate.add_argument("--sae", required=True, help="a folder in any format load_sae reads")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--out", default=None, help="write the metrics as JSON here")


    dashboard = steps.add_parser("dashboard", help="latent statistics, an HTML dashboard and a Neuronpedia-style JSON")
    data_options(dashboard)
    dashboard.add_argument("--sae", required=True, help="a folder in any format load_sae reads")
    dashboard.add_argument("--windows", type=int, default=2048, help="training windows to collect statistics on")
    dashboard.add_argument("--latents", type=int, default=1000,
                           help="list the first N latents that fire (0: all; ~12 kB each)")
    dashboard.add_argument("--batch-size", type=int, default=16)
    dashboard.add_argument("--out", required=True, help="the HTML file")
    dashboard.add_argument("--neuronpedia", default=None, help="also write the Neuronpedia-style JSON here")


def run(args: argparse.Namespace) -> None:
    """Dispatch ``mechscope sae <step>``."""
    {"harvest": _harvest, "train": _train, "eval": _eval, "dashboard": _dashboard}[args.sae_command](args)


def _windows(args: argparse.Namespace, model) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data.corpora import mixed_windows

    windows = mixed_windows(model.tokenizer, args.corpus.split("+"), args.context_size, seed=args.seed,
                            max_chars=args.max_chars)
    if len(windows) <= args.eval_windows:
        raise SelectionError(f"the corpus gives {len(windows)} windows of {args.context_size} tokens, "
                             f"not more than the {args.eval_windows} held out for evaluation")
    return windows[: -args.eval_windows or None], windows[len(windows) - args.eval_windows :]


def _load_model(args: argparse.Namespace):
    from ..models.loading import load

    return load(args.model, dtype=getattr(torch, args.dtype), device=args.device)


def _spec(args: argparse.Namespace, hooks: list[str]):
    from .store import StoreSpec

    return StoreSpec(args.model, tuple(hooks), context_size=args.context_size, corpus=args.corpus,
                     dtype=args.dtype, model_dtype=args.dtype)


def _fill_cache(args: argparse.Namespace, model, hooks: list[str], folder: Path, max_tokens: int | None,
                rank: int = 0, world: int = 1) -> int:
    """Harvest this rank's share of the training windows (every ``world``-th one) into ``folder``."""
    from .store import harvest_to_disk

    train_windows, _ = _windows(args, model)
    if max_tokens is not None:
        train_windows = train_windows[: math.ceil(max_tokens / (args.context_size - 1))]
    n_tokens = harvest_to_disk(model, _spec(args, hooks), train_windows[rank::world], folder, progress=rank == 0)
    print(f"activation cache {folder}: {n_tokens:,} tokens of {', '.join(hooks)}")
    return n_tokens


def _harvest(args: argparse.Namespace) -> None:
    _fill_cache(args, _load_model(args), args.hook, Path(args.activations), args.tokens)


def _train(args: argparse.Namespace) -> None:
    """Single process, or data parallel under ``torchrun`` (each rank harvests every
    world-th window into its own cache, ``<activations>/rank<r>``, and trains on
    ``--batch-size / world`` of each global batch; rank 0 saves)."""
    from .formats import save_saelens
    from .store import training_batches
    from .train import TrainConfig, train_sae

    out = Path(args.out)
    folder = Path(args.activations) if args.activations else out / "activations"
    if args.output_hook and args.arch in ("topk", "batchtopk"):
        raise SelectionError(f"SAELens's layout (what `sae train` saves) has no {args.arch} transcoder: use --arch relu "
                             "or jumprelu for a transcoder here (the Python API trains any)")
    rank, world = _start_distributed()
    if world > 1:
        if args.batch_size % world:
            raise SelectionError(f"--batch-size {args.batch_size} must divide evenly over {world} ranks")
        folder = folder / f"rank{rank}"
    hooks = [args.hook] + ([args.output_hook] if args.output_hook else [])
    model = _load_model(args)
    n_cached = _fill_cache(args, model, hooks, folder, args.tokens, rank, world)
    del model  # training reads the cache only
    spec = _spec(args, hooks)
    d_in = _width(folder, args.hook)
    d_out = _width(folder, args.output_hook) if args.output_hook else None
    cfg = SAEConfig(d_in=d_in, d_sae=args.d_sae, architecture=args.arch,
                    k=args.k if get_architecture(args.arch).uses_k else None, d_out=d_out,
                    skip_connection=args.skip_connection, hook_name=args.hook, output_hook_name=args.output_hook,
                    model_name=args.model)
    steps, local_batch = args.tokens // args.batch_size, args.batch_size // world
    per_pass = n_cached // local_batch  # full batches in one pass over this rank's cache
    if steps < 1 or per_pass < 1:
        raise SelectionError(f"--tokens {args.tokens} and the cache's {n_cached} tokens must each hold at least "
                             f"one batch of {local_batch}")
    dead_window = args.dead_window or min(10_000_000, args.tokens // 5)
    overrides = {"lr": args.lr, "l1_coefficient": args.l1_coefficient, "l0_coefficient": args.l0_coefficient}
    config = TrainConfig(steps=steps, normalize=args.normalize, autocast=args.autocast,
                         checkpoint_every=args.checkpoint_every, seed=args.seed,
                         dead_window_tokens=dead_window, **{k: v for k, v in overrides.items() if v is not None})
    epochs = math.ceil(steps / per_pass)
    batches = training_batches(folder, spec, local_batch, input_name=args.hook, target_name=args.output_hook,
                               seed=args.seed + rank, epochs=epochs, outlier_ratio=args.outlier_ratio,
                               split_across_ranks=False)
    if rank == 0:
        print(f"training {args.arch} SAE d_sae={args.d_sae} on {steps * args.batch_size:,} tokens "
              f"({steps} steps of {args.batch_size}, {epochs} pass(es) over the cache, {world} process(es))")
    sae = train_sae(SAE(cfg).to(args.device or "cpu"), batches, config, out=out, resume=args.resume)
    if rank == 0:
        save_saelens(sae, out / "sae")
        (out / "train_config.json").write_text(json.dumps({
            "train": asdict(config), "sae": cfg.to_dict(), "activations": str(folder), "world_size": world,
            "tokens": steps * args.batch_size}))
        print(f"saved {out / 'sae'} (SAELens layout)")
    if world > 1:
        torch.distributed.destroy_process_group()


def _start_distributed() -> tuple[int, int]:
    """``(rank, world)``: joins the process group when launched by ``torchrun`` with several ranks."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from torch import distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _width(folder: Path, name: str) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "shard_00000.safetensors"), "pt") as handle:
        return handle.get_slice(name).get_shape()[-1]


def _eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_sae
    from .formats import load_sae

    model = _load_model(args)
    sae = load_sae(args.sae).to(model.device)
    _, held_out = _windows(args, model)
    result = evaluate_sae(model, sae, held_out, batch_size=args.batch_size)
    metrics = result.to_dict()
    for name, value in metrics.items():
        print(f"{name:16s} {value:.4f}" if isinstance(value, float) else f"{name:16s} {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))


def _dashboard(args: argparse.Namespace) -> None:
    from .features import collect_features
    from .formats import load_sae

    model = _load_model(args)
    sae = load_sae(args.sae).to(model.device)
    train_windows, _ = _windows(args, model)
    features = collect_features(model, sae, train_windows[: args.windows], batch_size=args.batch_size)
    alive = (features.fire_counts > 0).nonzero().squeeze(-1).tolist()
    latents = alive[: args.latents] if args.latents else alive
    print(f"{len(alive)} of {sae.cfg.d_sae} latents fire on {features.n_tokens:,} tokens")
    print(f"wrote {features.dashboard(model, sae, args.out, latents)}")
    if args.neuronpedia:
        print(f"wrote {features.to_neuronpedia(model, sae, args.neuronpedia, latents)}")
