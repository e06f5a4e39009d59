"""The dashboard of docs/sae.md: statistics of the trained SmolLM2 TopK SAE over 1,024 training
windows (130k tokens), the five labelled latents plus 35 others (the 15 densest and 20 chosen
at random among the rest that fire), written to docs/sae-dashboard.html (and, given a third
path, the same latents as Neuronpedia-style JSON).

    python docs/examples/sae_dashboard.py runs/smollm2-l15/topk/sae docs/sae-dashboard.html [np.json]
"""

from __future__ import annotations

import sys

import torch

import mechscope as ms
from mechscope.data.corpora import mixed_windows

LABELS = {
    240: "English prose (fires on 32% of Wikipedia tokens, 0.1% of Python): verbs and prepositions of narrative",
    232: "Python: the attribute name after `self.` / `self._` (13% of Python tokens, 0.09% of prose)",
    3581: "Python: a name passed as an argument or index (`mode=mode`, `self._files[path]`)",
    2164: "prose: the sentence-final period",
    395: "prose: naming phrases ('what may be called', 'what was meant by')",
}


def main(sae_path: str, out: str, neuronpedia: str | None = None) -> None:
    model = ms.load("smollm2-135m", dtype=torch.bfloat16)
    sae = ms.load_sae(sae_path)
    windows = mixed_windows(model.tokenizer, ["wikipedia", "python_stdlib"], 128, seed=0)[:1024]
    features = ms.collect_features(model, sae, windows, progress=False)
    features.labels.update(LABELS)
    others = [j for j in features.fire_counts.argsort(descending=True).tolist() if j not in LABELS]
    alive = [j for j in others[15:] if features.fire_counts[j] > 0]
    chosen = [alive[i] for i in torch.randperm(len(alive), generator=torch.Generator().manual_seed(0))[:20].tolist()]
    latents = [*LABELS, *others[:15], *chosen]
    options = {"n_top": 8, "n_quantiles": 3, "per_quantile": 2}
    path = features.dashboard(out, latents, title="SmolLM2-135M blocks.15.resid_post TopK SAE (k 32, 4,608 latents)",
                              **options)
    if neuronpedia:
        features.to_neuronpedia(neuronpedia, latents, **options)
    dead = int((features.fire_counts == 0).sum())
    print(f"{features.n_tokens:,} tokens; {dead} latents never fire; wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main(*sys.argv[1:4])
