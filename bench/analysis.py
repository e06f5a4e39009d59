"""Benchmark: logit lens over all layers and head detection on the bundled model.

mechscope vs TransformerLens (TransformerBridge, from .venv-peers when present; `make
bench-peers` builds it) on the same repeated-random-token batch: time ratio and agreement
of the results (next-token log-probs of the lens at all 31 residual points; previous-token,
duplicate-token and induction scores of all 270 heads, with TransformerLens's score
definition, ``average="all"``). Without peers it compares head detection with the naive
way: caching every attention pattern, then scoring.

    python bench/analysis.py [--batch 4] [--tokens 50]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import mechscope as ms

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("previous_token", "duplicate_token", "induction")


def _peers(tokens: torch.Tensor) -> tuple[dict, dict] | None:
    python = ROOT / ".venv-peers" / "bin" / "python"
    if not python.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(tokens, f"{tmp}/tokens.pt")
        out = subprocess.run([str(python), str(ROOT / "bench" / "peers" / "analysis_peers.py"),
                              "--tokens", f"{tmp}/tokens.pt", "--out", f"{tmp}/out.pt"],
                             capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if out.returncode != 0:
            print(f"(peer run failed: {out.stderr.strip().splitlines()[-1]})")
            return None
        return json.loads(out.stdout.strip().splitlines()[-1]), torch.load(f"{tmp}/out.pt", weights_only=True)


def _naive_heads(model: ms.HookedModel, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cache every pattern, then score: what one writes without reducing inside hooks."""
    _, cache = model.run_with_cache(tokens, "blocks.*.attn.pattern")
    masks = ms.detection_masks(tokens, KINDS)
    patterns = cache.stack("blocks.*.attn.pattern")  # [L, b, h, q, k]
    return {k: (patterns * m[None, :, None]).sum((-1, -2)).mean(1) / tokens.shape[1] for k, m in masks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=50)
    args = parser.parse_args()
    model = ms.load("smollm2-135m")
    tokens = ms.repeated_random_tokens(args.tokens, batch=args.batch, seed=0)
    assert not (tokens[:, 1:] == tokens[:, :-1]).any(), "consecutive repeats would make the definitions differ"
    print(f"analysis benchmark: bundled SmolLM2-135M, {args.batch} x {2 * args.tokens} repeated random tokens, "
          f"{torch.get_num_threads()} threads\n")
    with torch.no_grad():
        model(tokens)  # warm-up
        start = time.perf_counter()
        lens = ms.logit_lens(model, tokens, target="next", k=1)
        lens_time = time.perf_counter() - start
        start = time.perf_counter()
        heads = ms.head_scores(model, tokens, KINDS, average="all")
        heads_time = time.perf_counter() - start
        start = time.perf_counter()
        naive = _naive_heads(model, tokens)
        naive_time = time.perf_counter() - start
    print(f"{'task':28s} {'mechscope s':>12s} {'other s':>9s} {'ratio':>7s}  agreement")
    naive_diff = max((heads.scores[k] - naive[k]).abs().max().item() for k in KINDS)
    print(f"{'heads vs cache-then-score':28s} {heads_time:12.3f} {naive_time:9.3f} {naive_time / heads_time:6.2f}x  "
          f"max |diff| {naive_diff:.1e}")
    peers = _peers(tokens)
    if peers is None:
        print("(no .venv-peers: run `make bench-peers` for the TransformerLens rows)")
        return
    timings, theirs = peers
    ours_lens = lens.target_logprob[:, :, :-1]
    lens_diff = (ours_lens - theirs["lens"]).abs().max().item()
    heads_diff = max((heads.scores[k] - theirs[f"heads.{k}"]).abs().max().item() for k in KINDS)
    print(f"{'logit lens vs TransformerLens':28s} {lens_time:12.3f} {timings['lens']:9.3f} "
          f"{timings['lens'] / lens_time:6.2f}x  max |diff| of log-probs {lens_diff:.1e}")
    print(f"{'heads vs TL detect_head':28s} {heads_time:12.3f} {timings['heads']:9.3f} "
          f"{timings['heads'] / heads_time:6.2f}x  max |diff| of scores {heads_diff:.1e}")
    print(f"\nscores agree to 1e-4: {heads_diff < 1e-4}")


if __name__ == "__main__":
    main()
