"""Benchmark: patching sweeps on the bundled model.

IOI, 6 prompts (template 0, ABC corruption), denoising, logit difference:
- every head at every position (z, 30 x 9 x 15 = 4050 cells) and the residual stream at
  every (layer, position): one forward per cell (`patch_one_by_one`) vs batched
  `activation_patching` (bit-identical?) and with ``answer_logits_only=True`` (max |diff|);
- attribution patching vs exact head patching: time ratio and Pearson r of the cells;
- path patching of every head to the logits;
- TransformerLens `patching.get_act_patch_attn_head_out_all_pos` (every head, one forward
  per head) on the same task, where `.venv-peers` exists (`make bench-peers`): time ratio and
  max |difference|.

    python bench/patching.py               # everything (the naive heads x positions loop takes ~12 min)
    python bench/patching.py --quick       # without the two per-position sweeps
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import mechscope as ms
from mechscope.causal.attribution import attribution_patching
from mechscope.causal.patching import activation_patching, patch_one_by_one
from mechscope.causal.path_patching import path_patching
from mechscope.data.ioi import ioi
from mechscope.models.hardware import run_settings

PEERS = Path(__file__).resolve().parents[1] / ".venv-peers" / "bin" / "python"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip the two per-position sweeps (~20 min)")
    args = parser.parse_args()
    model = ms.load("smollm2-135m")
    pairs = ioi(model, 6)
    print(f"patching benchmark: bundled SmolLM2-135M, IOI {len(pairs)} x {pairs.clean.shape[1]} tokens, "
          f"{run_settings(model.dtype)}\n")
    print(f"{'sweep':24s} {'cells':>6s} {'naive s':>8s} {'batched s':>10s} {'ratio':>7s}  identical  "
          f"{'answer-logits s':>15s} {'ratio':>7s}  max |diff|")
    sweeps = {}
    for label, component, per_position in (("heads x positions", "heads", True), ("resid_pre x positions",
                                                                                  "resid_pre", True)):
        if args.quick:
            continue
        naive, naive_time = timed(patch_one_by_one, model, pairs, component, per_position=per_position)
        batched, batched_time = timed(activation_patching, model, pairs, component, per_position=per_position)
        fast, fast_time = timed(activation_patching, model, pairs, component, per_position=per_position,
                                answer_logits_only=True)
        sweeps[label] = (batched, batched_time)
        print(f"{label:24s} {batched.values.numel():6d} {naive_time:8.2f} {batched_time:10.2f} "
              f"{naive_time / batched_time:6.2f}x  {torch.equal(batched.raw, naive)!s:9s}  {fast_time:15.2f} "
              f"{naive_time / fast_time:6.2f}x  {(fast.raw - naive).abs().max():.1e}")

    exact, exact_time = timed(activation_patching, model, pairs, "heads")
    approx, approx_time = timed(attribution_patching, model, pairs, "heads")
    r = torch.corrcoef(torch.stack([exact.values.flatten(), approx.values.flatten()]))[0, 1]
    print(f"\nattribution patching, heads: {approx_time:.2f} s vs exact {exact_time:.2f} s "
          f"({exact_time / approx_time:.1f}x faster), Pearson r = {r:.3f} over {exact.values.numel()} heads")
    if not args.quick:
        by_pos, by_pos_time = sweeps["heads x positions"]
        approx_pos, approx_pos_time = timed(attribution_patching, model, pairs, "heads", per_position=True)
        r_pos = torch.corrcoef(torch.stack([by_pos.values.flatten(), approx_pos.values.flatten()]))[0, 1]
        print(f"attribution patching, heads x positions: {approx_pos_time:.2f} s vs exact {by_pos_time:.2f} s "
              f"({by_pos_time / approx_pos_time:.0f}x faster), Pearson r = {r_pos:.3f}")
    path, path_time = timed(path_patching, model, pairs)
    top = path.top(4)
    named = [(f"L{l}H{h}", round(float(v), 2)) for l, h, v in zip(top.layer, top["head"], top.normalized)]
    print(f"path patching, every head -> logits: {path_time:.2f} s; top {named}")
    top = exact.top(5)
    named = [(f"L{l}H{h}", round(float(v), 3)) for l, h, v in zip(top.layer, top["head"], top.normalized)]
    print("top heads (denoising, normalised):", named)

    if PEERS.exists():
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"clean": pairs.clean, "corrupted": pairs.corrupted, "answers": pairs.answers,
                        "wrong": pairs.wrong}, f"{tmp}/pairs.pt")
            run = subprocess.run([str(PEERS), str(Path(__file__).parent / "peers" / "patching_peers.py"),
                                  "--pairs", f"{tmp}/pairs.pt", "--out", f"{tmp}/out.pt"],
                                 capture_output=True, text=True, check=False)
            if run.returncode != 0:
                print("TransformerLens row failed:", run.stderr[-2000:], file=sys.stderr)
                return
            theirs = torch.load(f"{tmp}/out.pt", weights_only=True)  # [layer, pos, head]
            timing = json.loads(run.stdout.strip().splitlines()[-1])["heads_all_pos"]
        ours = exact.raw.mean(-1)
        print(f"\nTransformerLens get_act_patch_attn_head_out_all_pos: {timing:.2f} s vs mechscope "
              f"{exact_time:.2f} s ({timing / exact_time:.2f}x), max |difference| {(ours - theirs).abs().max():.2e}")
    else:
        print("\n(.venv-peers not found: run `make bench-peers` for the TransformerLens row)")


if __name__ == "__main__":
    main()
