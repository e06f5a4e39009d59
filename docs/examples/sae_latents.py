"""Latents of the trained SmolLM2 TopK SAE (docs/sae.md, "Real result"): which latents separate
Python code from English prose, and the top contexts of chosen latents.

    python docs/examples/sae_latents.py runs/smollm2-l15/topk/sae [latent ...]

Collects latent statistics separately on 256 windows of Wikipedia and 256 windows of Python
standard-library source (128 tokens each, taken from the end of each corpus), prints the
latents whose firing rates differ most between the two, then each chosen latent's density on
each corpus, promoted tokens and top contexts.
"""

from __future__ import annotations

import sys

import torch

import mechscope as ms
from mechscope.data.corpora import packed_windows, python_stdlib, wikipedia


def context(example, width: int = 12) -> str:
    lo, hi = max(0, example.peak - width), example.peak + 3
    text = "".join(example.tokens[lo : example.peak]) + "[[" + example.tokens[example.peak] + "]]"
    return (text + "".join(example.tokens[example.peak + 1 : hi])).replace("\n", "\\n")


def main(sae_path: str, chosen: list[int]) -> None:
    torch.manual_seed(0)
    model = ms.load("smollm2-135m", dtype=torch.bfloat16)
    sae = ms.load_sae(sae_path)
    corpora = {"prose": packed_windows(model.tokenizer, wikipedia(), 128)[-256:],
               "code": packed_windows(model.tokenizer, python_stdlib(), 128)[-256:]}
    stats = {name: ms.collect_features(model, sae, windows, progress=False) for name, windows in corpora.items()}
    code, prose = stats["code"].density, stats["prose"].density
    gap = code - prose
    print("latents firing most more often on code than prose (density code / prose):")
    for j in gap.topk(5).indices.tolist():
        print(f"  {j:5d}  {code[j]:.3f} / {prose[j]:.3f}")
    print("latents firing most more often on prose than code:")
    for j in (-gap).topk(5).indices.tolist():
        print(f"  {j:5d}  {code[j]:.3f} / {prose[j]:.3f}")
    both = ms.collect_features(model, sae, torch.cat(list(corpora.values())), progress=False)
    for report in both.latents(chosen or gap.topk(1).indices.tolist(), n_top=5):
        j = report.latent
        print(f"\nlatent {j}: density code {code[j]:.4f}, prose {prose[j]:.4f}; max {report.max_activation:.2f}; "
              f"promotes {' '.join(repr(t) for t, _ in report.promoted[:5])}")
        for example in report.top:
            print(f"  {example.max_value:6.2f}  {context(example)}")


if __name__ == "__main__":
    main(sys.argv[1], [int(a) for a in sys.argv[2:]])
