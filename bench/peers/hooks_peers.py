"""Peer rows for bench/hooks.py, run inside .venv-peers (never imported by mechscope).

TransformerLens (TransformerBridge) and nnsight on the bundled model's cached safetensors
directory: plain forward, the 30 residual-stream outputs cached, and a full cache.
Prints one JSON list of rows on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODEL_DIR = Path(os.environ.get("MECHSCOPE_CACHE") or Path.home() / ".cache" / "mechscope") / "models" / "smollm2-135m"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _unique_mib(tensors) -> tuple[float, float]:
    seen = {}
    total = 0
    for t in tensors:
        total += t.numel() * t.element_size()
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) / 2**20, total / 2**20


def transformer_lens_rows(dtype):
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(MODEL_DIR), device="cpu", dtype=dtype)
    resid = [f"blocks.{i}.hook_resid_post" for i in range(30)]
    return {
        "tl_plain": lambda tokens: (bridge(tokens), None)[1],
        "tl_resid": lambda tokens: list(bridge.run_with_cache(tokens, names_filter=lambda n: n in resid)[1].values()),
        "tl_full": lambda tokens: list(bridge.run_with_cache(tokens)[1].values()),
    }


def nnsight_rows(dtype):
    import nnsight
    from nnsight import TransformersModel

    model = TransformersModel(str(MODEL_DIR), task="text-generation", device_map="cpu", dtype=dtype, dispatch=True)
    order = []  # module paths in the order the forward runs them (nnsight must read them so)
    handles = [m.register_forward_hook(lambda mod, a, o, name=name: order.append(name))
               for name, m in model._module.named_modules() if name]
    with torch.no_grad():
        model._module(torch.tensor([[100, 200, 300, 400]]))
    for h in handles:
        h.remove()
    seen = set()
    order = [n for n in order if not (n in seen or seen.add(n))]

    def resid(tokens):
        saved = []  # nnsight hands back only what is saved into objects created outside the trace
        with model.trace(tokens):
            saved.extend(nnsight.save([model.model.layers[i].output for i in range(30)]))
        return list(saved)

    def full(tokens):
        saved = []
        with model.trace(tokens):
            for name in order:
                module = model
                for part in name.split("."):
                    module = module[int(part)] if part.isdigit() else getattr(module, part)
                saved.append(module.output.save())
        return [s[0] if isinstance(s, tuple) else s for s in saved if isinstance(s, (torch.Tensor, tuple))]

    def plain(tokens):
        with model.trace(tokens):
            model.lm_head.output.save()

    return {"nnsight_plain": plain, "nnsight_resid": resid, "nnsight_full": full}


def _runners(dtype) -> dict:
    """Row name -> fn(tokens) returning the cached tensors (or None)."""
    runners = {}
    for build in (transformer_lens_rows, nnsight_rows):
        try:
            runners.update(build(dtype))
        except ImportError:
            continue
    return runners


def _memory(row: str, dtype, tokens) -> dict:
    """Peak RSS rise of one run of ``row`` over the loaded model warmed up on a tiny input."""
    run = _runners(dtype)[row]
    with torch.no_grad():
        run(tokens[:1, :8])
        Path("/proc/self/clear_refs").write_text("5")
        base = _rss_kib("VmRSS")
        cache = run(tokens)
        result = {"extra_peak_mib": (_rss_kib("VmHWM") - base) / 1024}
    if cache:
        result["cache_mib"], result["entries_mib"] = _unique_mib([t for t in cache if isinstance(t, torch.Tensor)])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-row")
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    tokens = torch.randint(100, 20000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    if args.memory_row:
        print(json.dumps(_memory(args.memory_row, dtype, tokens)))
        return
    runners = _runners(dtype)
    rows = {name: {"row": name} for name in runners}
    for name in runners:  # a fresh process per row, as bench/hooks.py measures its own rows
        out = subprocess.run([sys.executable, __file__, "--memory-row", name, "--dtype", args.dtype,
                              "--batch", str(args.batch), "--seq", str(args.seq)],
                             check=True, capture_output=True, text=True)
        rows[name].update(json.loads(out.stdout.strip().splitlines()[-1]))
    with torch.no_grad():
        for run in runners.values():
            run(tokens)
        times = {name: [] for name in runners}
        for _ in range(args.repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                run(tokens)
                times[name].append(time.perf_counter() - start)
    for name in runners:
        rows[name]["time"] = statistics.median(times[name])
    print(json.dumps(list(rows.values())))


if __name__ == "__main__":
    main()
