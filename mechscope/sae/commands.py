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

Every argument is checked before the model loads (`check_args`): ranges, output paths,
activation names (against the model's names, read from its config alone), a saved SAE's
hook and width, and with ``--resume`` the checkpoint's settings. ``--dtype auto`` (the
default) harvests in bf16 where the hardware computes it natively, else in fp32
(`models.hardware.default_dtype`), and says which.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ArgumentError, CheckpointMismatchError, ModelNotFoundError, OutputPathError, SelectionError

if TYPE_CHECKING:
    import torch

    from ..models.hook_points import HookPoint
    from .modules import SAE, SAEConfig
    from .train import TrainConfig

_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}
DTYPES = ("auto", "float32", "bfloat16", "float16")


def parse_count(text: str) -> int:
    """``"2M"`` -> 2,000,000; ``"500k"``, ``"1.5m"``, ``"4096"``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMbB]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (use e.g. 4096, 500k, 2M)")
    return round(float(match.group(1)) * _SUFFIXES[match.group(2).lower()])


def add_data_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The model and corpus options every harvesting command takes (``sae`` and
    ``transcoders`` subcommands); returns ``parser``."""
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="the model's dtype while harvesting (activations are stored in it); auto: bfloat16 "
                             "where the device computes it natively, else float32")
    parser.add_argument("--corpus", default="wikipedia+python_stdlib",
                        help="'+'-joined corpora: wikipedia, python_stdlib, hf:<dataset>[:<split>:<column>], a file")
    parser.add_argument("--max-chars", type=parse_count, default=None,
                        help="read at most this many characters of each streamed (hf:) corpus; give every "
                             "step the same value, so that they cut the same windows")
    parser.add_argument("--context-size", type=int, default=128, help="tokens per window (at least 2)")
    parser.add_argument("--eval-windows", type=int, default=256, help="windows held out of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    return parser


def add_parsers(sub: argparse._SubParsersAction, parents: tuple[argparse.ArgumentParser, ...] = ()) -> None:
    """The ``sae`` command and its subcommands (``parents``: options every subcommand takes).
    Builds without importing torch."""
    sae = sub.add_parser("sae", help="harvest activations, train and evaluate SAEs and transcoders",
                         parents=list(parents))
    steps = sae.add_subparsers(dest="sae_command", required=True)

    def step(name: str, help: str) -> argparse.ArgumentParser:
        return add_data_options(steps.add_parser(name, help=help, parents=list(parents)))

    harvest = step("harvest", "fill an activation cache (resumable)")
    harvest.add_argument("--hook", required=True, action="append", help="activation name (repeatable)")
    harvest.add_argument("--tokens", type=parse_count, default=None, help="at most this many tokens")
    harvest.add_argument("--activations", required=True, help="cache folder")

    train = step("train", "train an SAE or transcoder (harvesting first if needed)")
    train.add_argument("--hook", required=True, help="the activation the SAE reads")
    train.add_argument("--output-hook", default=None, help="transcoders: the activation reconstructed")
    train.add_argument("--skip-connection", action="store_true")
    train.add_argument("--arch", default="topk",
                       help="a registered SAE architecture: topk (default), batchtopk, relu, jumprelu, ...")
    train.add_argument("--k", type=int, default=32, help="active latents per token (topk, batchtopk)")
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
    train.add_argument("--out", required=True, help="the run folder")
    train.add_argument("--resume", action="store_true")

    evaluate = step("eval", "evaluate a saved SAE on the held-out windows")
    evaluate.add_argument("--sae", required=True, help="a folder in any format load_sae reads")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--out", default=None, help="write the metrics as JSON here")

    dashboard = step("dashboard", "latent statistics, an HTML dashboard and a Neuronpedia-style JSON")
    dashboard.add_argument("--sae", required=True, help="a folder in any format load_sae reads")
    dashboard.add_argument("--windows", type=int, default=2048, help="training windows to collect statistics on")
    dashboard.add_argument("--latents", type=int, default=1000,
                           help="list the first N latents that fire (0: all; ~12 kB each)")
    dashboard.add_argument("--batch-size", type=int, default=16)
    dashboard.add_argument("--out", required=True, help="the HTML file")
    dashboard.add_argument("--neuronpedia", default=None, help="also write the Neuronpedia-style JSON here")


# --------------------------------------------------------------------------- checks before any work

# option dest -> the smallest value it may take (options a subcommand lacks, or left unset, are skipped)
_AT_LEAST = {"context_size": 2, "eval_windows": 0, "max_chars": 1, "tokens": 1, "batch_size": 1, "k": 1,
             "d_sae": 1, "checkpoint_every": 1, "dead_window": 1, "windows": 1, "latents": 0}
_POSITIVE = ("lr", "outlier_ratio")  # floats that must be > 0 (NaN is refused too)
_NOT_NEGATIVE = ("l1_coefficient", "l0_coefficient")


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_ranges(args: argparse.Namespace) -> None:
    """An `ArgumentError` listing every numeric option out of its range (no model, no torch)."""
    problems = []
    for dest, low in _AT_LEAST.items():
        value = getattr(args, dest, None)
        if value is not None and value < low:
            problems.append(f"{_option(dest)} must be at least {low}, got {value}")
    for dest in _POSITIVE:
        value = getattr(args, dest, None)
        if value is not None and not value > 0:
            problems.append(f"{_option(dest)} must be positive, got {value}")
    for dest in _NOT_NEGATIVE:
        value = getattr(args, dest, None)
        if value is not None and not value >= 0:
            problems.append(f"{_option(dest)} must be zero or positive, got {value}")
    if problems:
        raise ArgumentError("; ".join(problems))


def check_folder(path: str | None, option: str) -> None:
    """An `OutputPathError` when ``path`` (a folder to write) or a parent of it is a file."""
    if path is None:
        return
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists():
            if not candidate.is_dir():
                what = "is a file" if candidate == Path(path) else f"is inside the file {str(candidate)!r}"
                raise OutputPathError(f"{option} {path!r} {what}; it must be a folder")
            return


def check_file(path: str | None, option: str) -> None:
    """An `OutputPathError` when ``path`` (a file to write) is a folder or its parent a file."""
    if path is None:
        return
    if Path(path).is_dir():
        raise OutputPathError(f"{option} {path!r} is a folder; it must be a file name")
    check_folder(str(Path(path).parent), f"the folder of {option}")


def check_paths(args: argparse.Namespace) -> None:
    """Output paths that cannot be written: a run or cache folder that is a file, an output
    file that is a folder."""
    command = args.sae_command
    check_folder(getattr(args, "activations", None), "--activations")
    if command == "train":
        check_folder(args.out, "--out")
    elif command in ("eval", "dashboard"):
        check_file(args.out, "--out")
        check_file(getattr(args, "neuronpedia", None), "--neuronpedia")


def model_hook_points(model: str) -> dict[str, HookPoint]:
    """The hook points ``{name: HookPoint}`` that ``ms.load(model)`` would have, read from the
    model's config alone (no weights): a bundled model's cached config (or its GGUF header), a
    local folder's ``config.json``, a GGUF file's header, or a hub id's config."""
    from transformers import AutoConfig

    from ..models.adapters import get_adapter
    from ..models.bundled import BUNDLED, gguf_path
    from ..models.config import build_config
    from ..models.hook_points import build_hook_points
    from ..paths import cache_path

    if model in BUNDLED and (cache_path("models", model) / "config.json").is_file():
        source, extra = str(cache_path("models", model)), {}
    elif model in BUNDLED:
        gguf = gguf_path(model)
        source, extra = str(gguf.parent), {"gguf_file": gguf.name}
    elif model.endswith(".gguf"):
        source, extra = str(Path(model).parent), {"gguf_file": Path(model).name}
    else:
        source, extra = model, {}
    try:
        config = AutoConfig.from_pretrained(source, **extra)
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"cannot read the config of model {model!r} (a bundled name, a local folder or "
                                 f"file, or a Hugging Face hub id): {str(error).splitlines()[0][:300]}") from error
    adapter = get_adapter(config.model_type)
    return {p.name: p for p in build_hook_points(adapter, build_config(config, adapter, False))}


def _point(points: dict[str, HookPoint], name: str, option: str) -> HookPoint:
    """The point of an exact, per-token activation name given as ``option``."""
    from ..data.harvest import check_per_token
    from ..errors import UnknownActivationError

    if any(c in name for c in "*?["):
        raise SelectionError(f"{option} takes exact activation names, not the pattern {name!r}")
    if name not in points:
        raise UnknownActivationError(name, points)
    return check_per_token(points[name])


def _sae_for_model(args: argparse.Namespace, points: dict[str, HookPoint]) -> SAE:
    """``--sae``, loaded, with its activation names and widths checked against the model."""
    from .formats import load_sae
    from .splice import check_sae_names, check_width

    sae = load_sae(args.sae)
    reads, writes = check_sae_names(sae.cfg)
    check_width(_point(points, reads, "the SAE's hook_name"), sae.cfg.d_in, "reads d_in")
    if sae.cfg.is_transcoder:
        check_width(_point(points, writes, "the SAE's output_hook_name"), sae.cfg.d_output, "writes d_out")
    return sae


def check_args(args: argparse.Namespace) -> dict:
    """Check ``mechscope sae <step>``'s arguments before any model load or harvest: ranges,
    paths, activation names, a saved SAE, and a training run's configs and checkpoint.
    Returns what the checks built and the step reuses (``points``, ``sae``, ``configs``)."""
    check_ranges(args)
    check_paths(args)
    found: dict = {"points": model_hook_points(args.model)}
    if args.sae_command == "harvest":
        for name in args.hook:
            _point(found["points"], name, "--hook")
    elif args.sae_command == "train":
        found["configs"] = _train_configs(args, found["points"])
        _check_resume(args, *found["configs"])
    else:
        found["sae"] = _sae_for_model(args, found["points"])
    return found


def _train_configs(args: argparse.Namespace, points: dict[str, HookPoint]) -> tuple[SAEConfig, TrainConfig]:
    """The SAE and training configs of ``sae train`` (what its checkpoint records)."""
    from ..data.harvest import token_width
    from .architectures import get_architecture
    from .modules import SAEConfig
    from .train import TrainConfig

    arch = get_architecture(args.arch)
    if args.output_hook and args.arch in ("topk", "batchtopk"):
        raise ArgumentError(f"SAELens's layout (what `sae train` saves) has no {args.arch} transcoder: use --arch relu "
                            "or jumprelu for a transcoder here (the Python API trains any)")
    if arch.uses_k and args.k > args.d_sae:
        raise ArgumentError(f"--k {args.k} is more than --d-sae {args.d_sae}: a TopK SAE keeps k of its d_sae latents")
    if args.tokens < args.batch_size:
        raise ArgumentError(f"--tokens {args.tokens} is less than one batch (--batch-size {args.batch_size})")
    d_in = token_width(_point(points, args.hook, "--hook"))
    d_out = token_width(_point(points, args.output_hook, "--output-hook")) if args.output_hook else None
    cfg = SAEConfig(d_in=d_in, d_sae=args.d_sae, architecture=args.arch, k=args.k if arch.uses_k else None,
                    d_out=d_out, skip_connection=args.skip_connection, hook_name=args.hook,
                    output_hook_name=args.output_hook, model_name=args.model)
    overrides = {"lr": args.lr, "l1_coefficient": args.l1_coefficient, "l0_coefficient": args.l0_coefficient}
    config = TrainConfig(steps=args.tokens // args.batch_size, normalize=args.normalize, autocast=args.autocast,
                         checkpoint_every=args.checkpoint_every, seed=args.seed,
                         dead_window_tokens=args.dead_window or min(10_000_000, args.tokens // 5),
                         **{k: v for k, v in overrides.items() if v is not None})
    return cfg, config


def _check_resume(args: argparse.Namespace, cfg: SAEConfig, config: TrainConfig) -> None:
    """With ``--resume``, a `CheckpointMismatchError` when the run folder's checkpoint was
    written for another SAE or training config (the settings `train.train_sae` records)."""
    from ..checkpoint import checkpoint_meta
    from ..training import checkpoint_history

    checkpoint = Path(args.out) / "checkpoint.safetensors"
    if not (args.resume and checkpoint.is_file()):
        return
    stored = checkpoint_meta(checkpoint).get("settings") or {}
    wanted = json.loads(json.dumps({"config": asdict(config), "sae": cfg.to_dict()}))
    differing = [f"{part}.{key}: checkpoint {stored.get(part, {}).get(key)!r}, now {value!r}"
                 for part in ("sae", "config") for key, value in wanted[part].items()
                 if (stored.get(part) or {}).get(key) != value]
    if differing:
        raise CheckpointMismatchError(f"--resume: {checkpoint} was written by a run with other settings "
                                      f"({'; '.join(differing)}); give the same options or another --out")
    step, runs = checkpoint_history(checkpoint)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"resuming {checkpoint} at step {step} of {config.steps} ({config.steps - step} steps left; "
          f"steps run so far: {', '.join(f'{a}..{b}' for a, b in runs)})")


def run(args: argparse.Namespace) -> None:
    """Run ``mechscope sae <step>`` once its arguments pass `check_args`."""
    found = check_args(args)
    {"harvest": _harvest, "train": _train, "eval": _eval, "dashboard": _dashboard}[args.sae_command](args, found)


def split_windows(args: argparse.Namespace, model) -> tuple[torch.Tensor, torch.Tensor]:
    """``(training windows, held-out windows)`` `[n, context_size]` of the corpus the data
    options name, shuffled with ``--seed``; the last ``--eval-windows`` are held out."""
    from ..data.corpora import mixed_windows

    windows = mixed_windows(model.tokenizer, args.corpus.split("+"), args.context_size, seed=args.seed,
                            max_chars=args.max_chars)
    if len(windows) <= args.eval_windows:
        raise SelectionError(f"the corpus gives {len(windows)} windows of {args.context_size} tokens, "
                             f"not more than the {args.eval_windows} held out for evaluation")
    return windows[: -args.eval_windows or None], windows[len(windows) - args.eval_windows :]


def model_dtype(args: argparse.Namespace) -> str:
    """The dtype name ``--dtype`` asks for (``auto``: `models.hardware.default_dtype` of ``--device``)."""
    if args.dtype != "auto":
        return args.dtype
    from ..models.hardware import default_dtype, dtype_name

    return dtype_name(default_dtype(args.device))


def load_model(args: argparse.Namespace):
    """``--model`` loaded in the dtype ``--dtype`` asks for (said on rank 0), on ``--device``."""
    import torch

    from ..models.hardware import describe
    from ..models.loading import load

    dtype = model_dtype(args)
    if int(os.environ.get("RANK", "0")) == 0:
        how = f"--dtype auto: {describe(args.device)}" if args.dtype == "auto" else "--dtype"
        print(f"loading {args.model} in {dtype} ({how})")
    return load(args.model, dtype=getattr(torch, dtype), device=args.device)


def _spec(args: argparse.Namespace, hooks: list[str]):
    from .store import StoreSpec

    dtype = model_dtype(args)
    return StoreSpec(args.model, tuple(hooks), context_size=args.context_size, corpus=args.corpus,
                     dtype=dtype, model_dtype=dtype)


def _fill_cache(args: argparse.Namespace, model, hooks: list[str], folder: Path, max_tokens: int | None,
                rank: int = 0, world: int = 1) -> int:
    """Harvest this rank's share of the training windows (every ``world``-th one) into ``folder``."""
    from .store import harvest_to_disk

    train_windows, _ = split_windows(args, model)
    if max_tokens is not None:
        train_windows = train_windows[: math.ceil(max_tokens / (args.context_size - 1))]
    n_tokens = harvest_to_disk(model, _spec(args, hooks), train_windows[rank::world], folder, progress=rank == 0)
    print(f"activation cache {folder}: {n_tokens:,} tokens of {', '.join(hooks)}")
    return n_tokens


def _harvest(args: argparse.Namespace, found: dict) -> None:
    _fill_cache(args, load_model(args), args.hook, Path(args.activations), args.tokens)


def _train(args: argparse.Namespace, found: dict) -> None:
    """Single process, or data parallel under ``torchrun`` (each rank harvests every
    world-th window into its own cache, ``<activations>/rank<r>``, and trains on
    ``--batch-size / world`` of each global batch; rank 0 saves)."""
    import torch

    from .formats import save_saelens
    from .modules import SAE
    from .store import training_batches
    from .train import train_sae

    cfg, config = found["configs"]
    out = Path(args.out)
    folder = Path(args.activations) if args.activations else out / "activations"
    rank, world = start_distributed()
    if world > 1:
        if args.batch_size % world:
            raise ArgumentError(f"--batch-size {args.batch_size} must divide evenly over {world} ranks")
        folder = folder / f"rank{rank}"
    hooks = [args.hook] + ([args.output_hook] if args.output_hook else [])
    model = load_model(args)
    n_cached = _fill_cache(args, model, hooks, folder, args.tokens, rank, world)
    del model  # training reads the cache only
    spec = _spec(args, hooks)
    steps, local_batch = config.steps, args.batch_size // world
    per_pass = n_cached // local_batch  # full batches in one pass over this rank's cache
    if per_pass < 1:
        raise SelectionError(f"the cache's {n_cached} tokens do not hold one batch of {local_batch}")
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


def start_distributed() -> tuple[int, int]:
    """``(rank, world)``: joins the process group when launched by ``torchrun`` with several ranks."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch
    from torch import distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _eval(args: argparse.Namespace, found: dict) -> None:
    from .evaluate import evaluate_sae

    model = load_model(args)
    sae = found["sae"].to(model.device)
    _, held_out = split_windows(args, model)
    result = evaluate_sae(model, sae, held_out, batch_size=args.batch_size)
    metrics = result.to_dict()
    for name, value in metrics.items():
        print(f"{name:16s} {value:.4f}" if isinstance(value, float) else f"{name:16s} {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))


def _dashboard(args: argparse.Namespace, found: dict) -> None:
    from .features import collect_features

    model = load_model(args)
    sae = found["sae"].to(model.device)
    train_windows, _ = split_windows(args, model)
    features = collect_features(model, sae, train_windows[: args.windows], batch_size=args.batch_size)
    alive = (features.fire_counts > 0).nonzero().squeeze(-1).tolist()
    latents = alive[: args.latents] if args.latents else alive
    print(f"{len(alive)} of {sae.cfg.d_sae} latents fire on {features.n_tokens:,} tokens")
    print(f"wrote {features.dashboard(model, sae, args.out, latents)}")
    if args.neuronpedia:
        print(f"wrote {features.to_neuronpedia(model, sae, args.neuronpedia, latents)}")
