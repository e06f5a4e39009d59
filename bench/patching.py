"""Benchmark: activation-patching sweeps on the bundled model, batched vs one forward per cell.

IOI, 6 prompts (template 0, ABC corruption), denoising: every head (z at all positions,
30 x 9 = 270 cells) and the residual stream at every (layer, position). Prints both
timings, the ratio and whether the results are identical.

    python bench/patching.py
"""

from __future__ import annotations

import time

import torch

import mechscope as ms
from mechscope.causal.patching import activation_patching, patch_one_by_one
from mechscope.data.ioi import ioi


def main() -> None:
    model = ms.load("smollm2-135m")
    pairs = ioi(model, 6)
    print(f"patching benchmark: bundled SmolLM2-135M, IOI {len(pairs)} x {pairs.clean.shape[1]} tokens, "
          f"{torch.get_num_threads()} threads\n")
    print(f"{'sweep':22s} {'cells':>6s} {'batched s':>10s} {'naive s':>9s} {'ratio':>7s}  identical")
    for component in ("heads", "resid_pre"):
        start = time.perf_counter()
        batched = activation_patching(model, pairs, component)
        batched_time = time.perf_counter() - start
        start = time.perf_counter()
        reference = patch_one_by_one(model, pairs, component)
        naive_time = time.perf_counter() - start
        cells = batched.raw.shape[0] * batched.raw.shape[1]
        print(f"{component:22s} {cells:6d} {batched_time:10.2f} {naive_time:9.2f} {naive_time / batched_time:6.2f}x  "
              f"{torch.equal(batched.raw, reference)}")
    print("\ntop heads (denoising, normalised):", [(f"L{l}H{h}", round(v, 3)) for l, h, v in
                                                  activation_patching(model, pairs, "heads").top(5)])


if __name__ == "__main__":
    main()
