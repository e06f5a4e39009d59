"""Benchmark: logit lens over all layers and head detection on the bundled model.

mechscope vs TransformerLens (TransformerBridge, from .venv-peers when present; `make
bench-peers` builds it) on the same repeated-random-token batch: time ratio and agreement
of the results. Two lens tasks, each over all 31 residual points: the next-token log-probs
alone (mechscope: ``stats="target_logprob"``) and the full lens (top-1 token, next-token
log-prob and rank, KL to the final distribution). Then previous-token, duplicate-token and
induction scores of all 270 heads, with TransformerLens's score definition,
``average="all"``. Without peers it compares head detection with the naive way: caching
every attention pattern, then scoring. The lens runs are interleaved with TransformerLens's
(one persistent peer process) and repeated; the table shows medians.

    python bench/analysis.py [--batch 4] [--tokens 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import mechscope as ms
from mechscope.models.hardware import run_settings

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("previous_token", "duplicate_token", "induction")


class _Peer:
    """TransformerLens in .venv-peers, one process answering one task per request."""

    def __init__(self, tokens: torch.Tensor, tmp: str):
        self.out, self.err = f"{tmp}/out.pt", f"{tmp}/peer.err"
        torch.save(tokens, f"{tmp}/tokens.pt")
        self._err_file = open(self.err, "w")  # noqa: SIM115 (open while the peer runs)
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv-peers" / "bin" / "python"), str(ROOT / "bench" / "peers" / "analysis_peers.py"),
             "--tokens", f"{tmp}/tokens.pt", "--out", self.out], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._err_file, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        self._expect("ready")

    def _expect(self, prefix: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line
        self.proc.wait()
        raise RuntimeError(f"peer run failed: {(Path(self.err).read_text().strip().splitlines() or ['?'])[-1]}")

    def run(self, task: str) -> float:
        self.proc.stdin.write(task + "\n")
        self.proc.stdin.flush()
        return json.loads(self._expect("{"))["seconds"]

    def close(self) -> dict:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait()
        self._err_file.close()
        return torch.load(self.out, weights_only=True)


def _start_peer(tokens: torch.Tensor, tmp: str) -> _Peer | None:
    if not (ROOT / ".venv-peers" / "bin" / "python").exists():
        return None
    try:
        return _Peer(tokens, tmp)
    except RuntimeError as err:
        print(f"({err})")
        return None


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


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
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = ms.load("smollm2-135m")
    tokens = ms.repeated_random_tokens(args.tokens, batch=args.batch, seed=0)
    assert not (tokens[:, 1:] == tokens[:, :-1]).any(), "consecutive repeats would make the definitions differ"
    print(f"analysis benchmark: bundled SmolLM2-135M, {args.batch} x {2 * args.tokens} repeated random tokens, "
          f"{run_settings(model.dtype)}, {args.repeats} interleaved repeats (medians)\n")
    times: dict[str, list[float]] = {"lens": [], "lens_full": [], "tl.lens": [], "tl.lens_full": []}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        peer = _start_peer(tokens, tmp)
        model(tokens)  # warm-up
        ours = {"lens": lambda: ms.logit_lens(model, tokens, target="next", stats="target_logprob"),
                "lens_full": lambda: ms.logit_lens(model, tokens, target="next", k=1)}
        results = {}
        for rep in range(args.repeats):
            for task, fn in ours.items():
                # pairs run back to back, in alternating order, so both sides see the same load
                for side in (("ours", "tl") if rep % 2 == 0 else ("tl", "ours")):
                    if side == "ours":
                        results[task], seconds = _timed(fn)
                        times[task].append(seconds)
                    elif peer:
                        times[f"tl.{task}"].append(peer.run(task))
        lens, full = results["lens"], results["lens_full"]
        heads, heads_time = _timed(lambda: ms.head_scores(model, tokens, KINDS, average="all"))
        naive, naive_time = _timed(lambda: _naive_heads(model, tokens))
        tl_heads_time = peer.run("heads") if peer else None
        theirs = peer.close() if peer else None
    med = {k: statistics.median(v) for k, v in times.items() if v}
    print(f"{'task (medians; ratio: median of pairs)':34s} {'mechscope s':>10s} {'other s':>9s} {'ratio':>7s}  agreement")
    naive_diff = max((heads.scores[k] - naive[k]).abs().max().item() for k in KINDS)
    print(f"{'heads vs cache-then-score':34s} {heads_time:10.3f} {naive_time:9.3f} {naive_time / heads_time:6.2f}x  "
          f"max |diff| {naive_diff:.1e}")
    if theirs is None:
        print(f"{'logit lens, next-token log-probs':34s} {med['lens']:10.3f}")
        print(f"{'logit lens, full':34s} {med['lens_full']:10.3f}")
        print("(no .venv-peers: run `make bench-peers` for the TransformerLens rows)")
        return
    lens_diff = (lens.target_logprob[:, :, :-1] - theirs["lens"]).abs().max().item()
    full_diff = max((full.target_logprob[:, :, :-1] - theirs["full.logprob"]).abs().max().item(),
                    (full.top_logprobs[..., 0] - theirs["full.top_logprobs"]).abs().max().item())
    kl_diff = (full.kl_to_final - theirs["full.kl"]).abs().max().item()
    top_same = (full.top_ids[..., 0] == theirs["full.top_ids"]).float().mean().item()
    rank_off = (full.target_rank[:, :, :-1] - theirs["full.rank"]).abs()
    heads_diff = max((heads.scores[k] - theirs[f"heads.{k}"]).abs().max().item() for k in KINDS)
    for task, label in (("lens", "lens next-token log-probs vs TL"), ("lens_full", "lens full (top-1, rank, KL) vs TL")):
        paired = statistics.median(t / o for t, o in zip(times[f"tl.{task}"], times[task]))
        agreement = (f"max |diff| of log-probs {lens_diff:.1e}" if task == "lens" else
                     f"log-probs {full_diff:.1e}, KL {kl_diff:.1e}, top-1 equal {top_same:.2%}, "
                     f"ranks equal {(rank_off == 0).float().mean().item():.2%} (max off {int(rank_off.max())})")
        print(f"{label:34s} {med[task]:10.3f} {med[f'tl.{task}']:9.3f} {paired:6.2f}x  {agreement}")
        print(f"{'  best of ' + str(args.repeats):34s} {min(times[task]):10.3f} {min(times[f'tl.{task}']):9.3f} "
              f"{min(times[f'tl.{task}']) / min(times[task]):6.2f}x")
    print(f"{'heads vs TL detect_head':34s} {heads_time:10.3f} {tl_heads_time:9.3f} "
          f"{tl_heads_time / heads_time:6.2f}x  max |diff| of scores {heads_diff:.1e}")
    print("\nruns (s): " + "; ".join(f"{k} " + ", ".join(f"{t:.2f}" for t in v) for k, v in times.items()))
    print(f"scores agree to 1e-4: {heads_diff < 1e-4}")


if __name__ == "__main__":
    main()
