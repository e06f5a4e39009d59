"""Tuned lens vs logit lens on the bundled model, offline Wikipedia.

Trains (or resumes, or loads) a tuned lens on windows from 90 of the Wikipedia articles,
then reports mean KL(final || lens) per layer on windows from the other, held-out
articles, for the logit lens and the tuned lens, and their ratio.

    python bench/tuned_lens.py [--steps 300] [--train-windows 64] [--eval-windows 16]
"""

from __future__ import annotations

import argparse
import time

import mechscope as ms
from mechscope.analysis.tuned_lens import TunedLens, lens_kl, lens_points, train_tuned_lens
from mechscope.data import corpora
from mechscope.models.hardware import native_bf16, run_settings
from mechscope.paths import cache_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--train-windows", type=int, default=64)
    parser.add_argument("--eval-windows", type=int, default=16)
    args = parser.parse_args()
    model = ms.load("smollm2-135m")
    texts = corpora.wikipedia()
    train = corpora.token_windows(model.tokenizer, texts[:90], 128, args.train_windows, seed=0)
    held_out = corpora.token_windows(model.tokenizer, texts[90:], 128, args.eval_windows, seed=1)
    out = cache_path("tuned_lens", f"smollm2-135m-wiki-{args.steps}x{args.train_windows}")
    start = time.perf_counter()
    if (out / "tuned_lens.json").is_file():
        lens = TunedLens.load(out)
    else:
        lens = train_tuned_lens(model, train, steps=args.steps, out=out, bf16_matmuls=native_bf16())
    print(f"tuned lens: {args.steps} steps on {train.numel()} tokens, ready in {time.perf_counter() - start:.0f} s "
          f"({out}); {run_settings(model.dtype)} (bf16 unembedding matmuls while training where native)\n")
    logit = lens_kl(model, held_out)
    tuned = lens_kl(model, held_out, lens)
    print(f"held-out: {held_out.shape[0]} windows x 128 tokens from {len(texts) - 90} unseen articles "
          "(position 0 excluded); mean KL(final || lens), nats\n")
    print(f"{'point':22s} {'logit lens':>11s} {'tuned lens':>11s} {'ratio':>7s}")
    for name, a, b in zip(lens_points(model), logit.tolist(), tuned.tolist()):
        print(f"{name:22s} {a:11.3f} {b:11.3f} {b / a:7.3f}")
    print(f"{'blocks.29.resid_post':22s} {0.0:11.3f} {0.0:11.3f}   (the output itself)")
    print(f"\ntuned lower at every layer but the last: {bool((tuned < logit).all())}; "
          f"mean KL {logit.mean():.3f} -> {tuned.mean():.3f}")


if __name__ == "__main__":
    main()
