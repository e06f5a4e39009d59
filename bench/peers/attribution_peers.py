"""Peer graph for bench/attribution_graph.py, run inside .venv-peers (never imported by mechscope).

circuit-tracer's attribution graph (``circuit_tracer.attribute``) of one prompt through a
per-layer transcoder set saved in circuit-tracer's on-disk layout (``config.yaml`` with
``model_kind: transcoder_set`` plus ``layer_{i}.safetensors``), on a local Hugging Face model
folder, offline, on CPU in float32, every active feature (``max_feature_nodes=None``).

Environment: PyPI ``circuit-tracer`` 0.5.0 with ``nnsight==0.6.1`` (0.8.x lacks
``nnsight.intervention.tracing``, which circuit-tracer imports), ``transformers`` 4.57.3 (its pin),
torch 2.13.0 (``.venv-peers/constraints.txt``). TransformerLens is only a fallback backend: it
refuses a local folder whose name is not one of its official models (SmolLM2 is not).

Only circuit-tracer's public API is called. Four adjustments happen here, each printed:

* the model folder was written by transformers 5 (``tokenizer_class: TokenizersBackend``,
  ``rope_parameters``); transformers 4.57 cannot load that tokenizer and silently uses
  rope_theta=10000 instead of 100000, so a 4.x-readable view of it (symlinked weights, rewritten
  config.json / tokenizer_config.json) is written to ``--shim-dir`` and loaded instead;
* the transcoders' ``transcoders:`` entries are made absolute (they are relative to the
  config's folder) and ``scan`` is set, since the config is read from disk rather than the hub;
* the TopK activation: PyPI's ``circuit-tracer`` 0.5.0 (published from the Caerii fork) ignores
  the config's ``activation: topk`` / ``k`` and loads every layer with ``F.relu``; the layers
  get circuit-tracer's own ``TopK(k)`` (``circuit_tracer.transcoder.activation_functions``),
  which is what upstream decoderesearch/circuit-tracer's loader does with that config;
* nnsight backend on a ``LlamaForCausalLM``: circuit-tracer's Llama mapping has no
  ``ln2.hook_normalized``; its ``mlp.hook_in`` (``post_attention_layernorm`` output, after the
  RMSNorm gain = the MLP's input) is the same point and is used instead.

By default the prompt is exactly ``--tokens`` (circuit-tracer's ``ensure_tokenized`` would
prepend a special token when the first id is not one; ``--prepend-bos`` keeps that behaviour).
Either way circuit-tracer zeroes position 0's features *and* its error nodes.

Output (``torch.save``'d dict): active_features ``[n, 3]`` (layer, pos, feature),
activation_values, selected_features, adjacency_matrix (dense, rows = targets, cols = sources,
node order: features, errors ``[layer, pos]`` layer-major, tokens ``[pos]``, logits),
logit_tokens, logit_probabilities, input_tokens, seconds (model+transcoder load excluded:
``attribute`` only; ``load_seconds`` separately), peak_rss_gib, versions.

    HF_HUB_OFFLINE=1 .venv-peers/bin/python bench/peers/attribution_peers.py [OUT.pt]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import yaml

RUN = Path("/work/runs/ct-check")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def load_transcoders(folder: Path, feature_input_hook: str | None):
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.utils.hf_utils import load_transcoders as ct_load_transcoders

    config = yaml.safe_load((folder / "config.yaml").read_text())
    config = {k: v for k, v in config.items() if k != "mechscope"}
    config["transcoders"] = [p if p.startswith("hf://") or os.path.isabs(p) else str(folder / p)
                             for p in config["transcoders"]]
    config.setdefault("scan", f"local:{folder}")
    config.setdefault("repo_id", "")
    if feature_input_hook is not None:
        print(f"[adjust] feature_input_hook {config['feature_input_hook']!r} -> {feature_input_hook!r}")
        config["feature_input_hook"] = feature_input_hook
    tc = ct_load_transcoders(config, device=torch.device("cpu"), dtype=torch.float32,
                             lazy_encoder=False, lazy_decoder=False)
    if config.get("activation") == "topk":
        k = int(config["k"])
        wrong = [i for i, t in enumerate(tc) if not (isinstance(t.activation_function, TopK)
                                                      and t.activation_function.k == k)]
        if wrong:
            got = tc[wrong[0]].activation_function
            print(f"[adjust] circuit-tracer's loader ignored activation=topk (layers got "
                  f"{getattr(got, '__name__', type(got).__name__)}); setting circuit_tracer's "
                  f"TopK(k={k}) on {len(wrong)} layers")
            for i in wrong:
                tc[i].activation_function = TopK(k)
    return tc, config


def transformers4_view(model_dir: Path, shim_dir: Path) -> Path:
    """circuit-tracer pins ``transformers<=4.57.3``; a folder written by transformers 5 has
    ``tokenizer_class: TokenizersBackend`` (unknown to 4.x: the tokenizer fails to load) and
    ``rope_parameters`` instead of ``rope_theta`` (4.x silently falls back to rope_theta=10000).
    Returns ``model_dir`` itself when it needs neither fix, else a folder beside it with the same
    weights and tokenizer.json (symlinks) and 4.x-readable config.json / tokenizer_config.json."""
    import json

    import transformers

    cfg = json.loads((model_dir / "config.json").read_text())
    tok_cfg_path = model_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.exists() else {}
    if int(transformers.__version__.split(".")[0]) >= 5 or (
            "rope_parameters" not in cfg and tok_cfg.get("tokenizer_class") != "TokenizersBackend"):
        return model_dir
    shim_dir.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.name not in ("config.json", "tokenizer_config.json"):
            link = shim_dir / item.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(item.resolve())
    rope = cfg.pop("rope_parameters", None) or {}
    if rope:
        cfg["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
        print(f"[adjust] config.json rope_parameters {rope} -> rope_theta={cfg['rope_theta']} "
              f"(transformers {transformers.__version__} ignores rope_parameters)")
    (shim_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    if tok_cfg.get("tokenizer_class") == "TokenizersBackend":
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        for key in ("backend", "is_local", "local_files_only"):
            tok_cfg.pop(key, None)
        print("[adjust] tokenizer_config.json tokenizer_class TokenizersBackend -> PreTrainedTokenizerFast")
    (shim_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    print(f"[adjust] model folder for transformers {transformers.__version__}: {shim_dir}")
    return shim_dir


def build_model(model_dir: Path, tc, backend: str):
    from circuit_tracer import ReplacementModel

    return ReplacementModel.from_pretrained_and_transcoders(
        model_name=str(model_dir), transcoders=tc, backend=backend,
        device=torch.device("cpu"), dtype=torch.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default=str(RUN / "circuit_tracer_graph.pt"))
    ap.add_argument("--model", default="/root/.cache/mechscope/models/smollm2-135m")
    ap.add_argument("--transcoders", default=str(RUN / "transcoders"))
    ap.add_argument("--tokens", default=str(RUN / "tokens.pt"))
    ap.add_argument("--shim-dir", default=str(RUN / "smollm2-135m-transformers4"),
                    help="where a transformers-4-readable view of --model is written if needed")
    ap.add_argument("--backend", choices=["auto", "nnsight", "transformerlens"], default="auto")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-n-logits", type=int, default=3)
    ap.add_argument("--desired-logit-prob", type=float, default=0.95)
    ap.add_argument("--prepend-bos", action="store_true",
                    help="let circuit-tracer prepend a special token (its default); off: the exact ids")
    args = ap.parse_args()

    import circuit_tracer
    from circuit_tracer import attribute

    torch.manual_seed(0)
    tokens = torch.load(args.tokens).reshape(-1).long()
    tc_dir = Path(args.transcoders)
    model_dir = transformers4_view(Path(args.model), Path(args.shim_dir))
    arch = (__import__("json").loads((model_dir / "config.json").read_text()).get("architectures") or [""])[0]

    backends = ["nnsight", "transformerlens"] if args.backend == "auto" else [args.backend]
    t_load = time.perf_counter()
    model, errors, used, config = None, {}, None, None
    for backend in backends:
        in_hook = None
        if backend == "nnsight":
            from circuit_tracer.utils.tl_nnsight_mapping import get_mapping
            raw = yaml.safe_load((tc_dir / "config.yaml").read_text())["feature_input_hook"]
            hooks = get_mapping(arch).feature_hook_mapping
            if raw not in hooks and raw == "ln2.hook_normalized" and "mlp.hook_in" in hooks:
                in_hook = "mlp.hook_in"
        try:
            tc, config = load_transcoders(tc_dir, in_hook)
            model = build_model(model_dir, tc, backend)
            used = backend
            break
        except Exception as exc:  # noqa: BLE001 - report and try the next backend
            errors[backend] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"[backend {backend} failed] {errors[backend]}", file=sys.stderr)
    if model is None:
        raise SystemExit(f"no backend could build circuit-tracer's ReplacementModel: {errors}")
    load_seconds = time.perf_counter() - t_load

    if not args.prepend_bos:
        # circuit-tracer's ensure_tokenized prepends a special token unless the first id is one;
        # make it return exactly the given ids (position 0 is still zeroed by circuit-tracer).
        cls = type(model)
        original = cls.ensure_tokenized
        cls.ensure_tokenized = lambda self, prompt: (torch.as_tensor(prompt).reshape(-1).long().to(self.device)
                                                     if isinstance(prompt, (torch.Tensor, list))
                                                     else original(self, prompt))
    print(f"backend={used} arch={arch} tokens={tokens.tolist()} prepend_bos={args.prepend_bos} "
          f"batch_size={args.batch_size} torch_threads={torch.get_num_threads()} load={load_seconds:.1f}s")

    t0 = time.perf_counter()
    graph = attribute(tokens, model, max_n_logits=args.max_n_logits, desired_logit_prob=args.desired_logit_prob,
                      batch_size=args.batch_size, max_feature_nodes=None, verbose=True)
    seconds = time.perf_counter() - t0
    peak = _peak_rss_gib()

    logit_tokens = torch.tensor([t.vocab_idx for t in graph.logit_targets], dtype=torch.long)
    logit_strings = [t.token_str for t in graph.logit_targets]
    n_feat = int(graph.active_features.shape[0])
    n_layers, n_pos = int(model.cfg.n_layers), len(graph.input_tokens)
    result = {
        "active_features": graph.active_features.cpu().long(),
        "activation_values": graph.activation_values.detach().cpu().float(),
        "selected_features": graph.selected_features.cpu().long(),
        "adjacency_matrix": graph.adjacency_matrix.detach().cpu().float(),
        "logit_tokens": logit_tokens,
        "logit_targets": logit_strings,
        "logit_probabilities": graph.logit_probabilities.detach().cpu().float(),
        "input_tokens": graph.input_tokens.cpu().long(),
        "node_layout": {"n_features": n_feat, "n_layers": n_layers, "n_pos": n_pos,
                        "n_errors": n_layers * n_pos, "n_tokens": n_pos, "n_logits": len(logit_strings),
                        "order": "features, errors[layer, pos] (layer-major), tokens[pos], logits"},
        "seconds": seconds, "load_seconds": load_seconds, "peak_rss_gib": peak,
        "backend": used, "prepend_bos": args.prepend_bos, "batch_size": args.batch_size,
        "zero_positions": str(getattr(model, "zero_positions", None)),
        "feature_input_hook": config["feature_input_hook"], "feature_output_hook": config["feature_output_hook"],
        "activation": f"{config.get('activation')} k={config.get('k')}",
        "circuit_tracer_version": getattr(circuit_tracer, "__version__", None) or _version("circuit-tracer"),
        "versions": {d: _version(d) for d in ("circuit-tracer", "nnsight", "transformer-lens", "transformers", "torch")},
        "backend_errors": errors,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, args.out)

    adj = result["adjacency_matrix"]
    acts = result["activation_values"]
    print(f"saved {args.out}")
    print(f"circuit-tracer {result['circuit_tracer_version']} ({used}): {n_pos} positions, {n_feat} active features "
          f"(min act {float(acts.min()):.4g}, non-positive {int((acts <= 0).sum())}), adjacency {tuple(adj.shape)}, "
          f"{int((adj != 0).sum())} nonzero edges")
    print(f"logits {list(zip(logit_strings, logit_tokens.tolist(), [round(p, 4) for p in result['logit_probabilities'].tolist()]))}")
    print(f"attribute: {seconds:.1f}s, peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
