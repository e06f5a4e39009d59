"""Benchmark: what mechscope's hooks cost on the bundled model.

Rows (batch 8 x 128 random tokens, fp32 and bf16, torch.no_grad):
  hf         the plain Hugging Face model, unwrapped (the baseline)
  no_hooks   mechscope forward with no hooks
  resid      run_with_cache of every blocks.*.resid_post
  full       run_with_cache of every name (pattern, scores, per-head outputs included)
Timings are medians of interleaved runs (so background load hits every row alike);
ratios are to the ``hf`` row. Peak memory is measured in a fresh child process per row,
as the rise of peak RSS over the loaded, warmed-up model. For the caches, ``cache MiB``
is the unique storage held and ``entries MiB`` the sum of the entries' sizes: equal would
mean no aliasing, smaller means aliased entries (resid_pre[l+1] is resid_post[l]) are
stored once. With --peers, the same rows for TransformerLens / nnsight from .venv-peers.

    python bench/hooks.py [--repeats 5] [--dtypes fp32,bf16] [--peers]
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

ROWS = ("hf", "no_hooks", "resid", "full")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ROOT = Path(__file__).resolve().parent.parent


def _models(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    import mechscope as ms
    from mechscope.models.bundled import cached_dir

    plain = AutoModelForCausalLM.from_pretrained(cached_dir("smollm2-135m"), dtype=dtype).eval()
    plain.requires_grad_(False)
    hooked = ms.load("smollm2-135m", dtype=dtype)
    return plain, hooked


def _runner(row: str, plain, hooked, tokens: torch.Tensor):
    """A zero-argument callable running one row; returns the cache (or None)."""
    def hf():
        plain(input_ids=tokens, use_cache=False)

    def no_hooks():
        hooked(tokens)

    def cached():
        return hooked.run_with_cache(tokens, "blocks.*.resid_post" if row == "resid" else None)[1]

    return {"hf": hf, "no_hooks": no_hooks}.get(row, cached)


def _tokens(batch: int, seq: int) -> torch.Tensor:
    return torch.randint(100, 20000, (batch, seq), generator=torch.Generator().manual_seed(0))


def time_rows(dtype: torch.dtype, batch: int, seq: int, repeats: int) -> dict[str, float]:
    plain, hooked = _models(dtype)
    tokens = _tokens(batch, seq)
    runners = {row: _runner(row, plain, hooked, tokens) for row in ROWS}
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    with torch.no_grad():
        for run in runners.values():  # warm-up
            run()
        for _ in range(repeats):
            for row, run in runners.items():
                start = time.perf_counter()
                run()
                times[row].append(time.perf_counter() - start)
    return {row: statistics.median(ts) for row, ts in times.items()}


def _load_seconds() -> float:
    import mechscope as ms

    ms.load("smollm2-135m")  # makes sure the cache exists
    times = []
    for _ in range(3):
        start = time.perf_counter()
        ms.load("smollm2-135m")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(row: str, dtype: torch.dtype, batch: int, seq: int) -> dict[str, float]:
    """Run in a child process: peak RSS rise of one row over the warmed-up model."""
    plain, hooked = _models(dtype)
    tokens = _tokens(batch, seq)
    run = _runner(row, plain, hooked, tokens)
    with torch.no_grad():
        _runner("hf", plain, hooked, tokens[:1, :8])()
        hooked(tokens[:1, :8])
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
        base = _rss_kib("VmRSS")
        cache = run()
        peak = _rss_kib("VmHWM")
    result = {"extra_peak_mib": (peak - base) / 1024}
    if cache is not None:
        result["cache_mib"] = cache.nbytes / 2**20
        result["entries_mib"] = sum(t.numel() * t.element_size() for t in cache.values()) / 2**20
        result["entries"] = len(cache)
    return result


def _child_memory(row: str, dtype_name: str, batch: int, seq: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-row", row, "--dtypes", dtype_name, "--batch", str(batch), "--seq", str(seq)],
        check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peers(dtype_name: str, batch: int, seq: int, repeats: int) -> list[dict]:
    python = ROOT / ".venv-peers" / "bin" / "python"
    script = ROOT / "bench" / "peers" / "hooks_peers.py"
    if not python.exists():
        print("(no .venv-peers: run `make bench-peers` to add TransformerLens / nnsight rows)")
        return []
    out = subprocess.run(
        [str(python), str(script), "--dtype", dtype_name, "--batch", str(batch), "--seq", str(seq),
         "--repeats", str(repeats)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if out.returncode != 0:
        print(f"(peer benchmark failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode})")
        return []
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--peers", action="store_true")
    parser.add_argument("--memory-row", choices=ROWS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype_names = args.dtypes.split(",")
    if args.memory_row:
        print(json.dumps(measure_memory(args.memory_row, DTYPES[dtype_names[0]], args.batch, args.seq)))
        return

    from mechscope.models.hardware import run_settings

    print(f"mechscope hooks benchmark: bundled SmolLM2-135M, batch {args.batch} x {args.seq} tokens, "
          f"{run_settings(*(DTYPES[name] for name in dtype_names))}, median of {args.repeats} interleaved runs\n")
    print(f"ms.load('smollm2-135m') from the safetensors cache: {_load_seconds():.2f} s (median of 3)\n")
    header = f"{'dtype':5s} {'row':14s} {'time s':>8s} {'ratio':>7s} {'peak +MiB':>10s} {'cache MiB':>10s} {'entries MiB':>12s}"
    print(header)
    print("-" * len(header))
    for dtype_name in dtype_names:
        times = time_rows(DTYPES[dtype_name], args.batch, args.seq, args.repeats)
        for row in ROWS:
            mem = _child_memory(row, dtype_name, args.batch, args.seq)
            cache = f"{mem['cache_mib']:10.1f} {mem['entries_mib']:12.1f}" if "cache_mib" in mem else f"{'':10s} {'':12s}"
            print(f"{dtype_name:5s} {row:14s} {times[row]:8.3f} {times[row] / times['hf']:6.3f}x "
                  f"{mem['extra_peak_mib']:10.1f} {cache}")
        if args.peers:
            for peer in _peers(dtype_name, args.batch, args.seq, args.repeats):
                print(f"{dtype_name:5s} {peer['row']:14s} {peer['time']:8.3f} {peer['time'] / times['hf']:6.3f}x "
                      f"{peer.get('extra_peak_mib', float('nan')):10.1f} {peer.get('cache_mib', float('nan')):10.1f} "
                      f"{peer.get('entries_mib', float('nan')):12.1f}")
        print()
    print("Targets: no_hooks <= 1.02x, resid <= 1.05x, full cache stored once (cache MiB < entries MiB).")


if __name__ == "__main__":
    main()
