"""Writes the interactive figures of docs/hooked-model.md, analysis.md, tasks.md, adapters.md,
sae.md and circuits.md from real runs of the bundled SmolLM2-135M (run from the repository root):

    python docs/examples/figures.py [hooked-model] [analysis] [tasks] [adapters] [sae] [circuits]

with no argument, all of them. Figures go to docs/figures/ as HTML that loads
docs/figures/plotly.min.js (stored once for every docs figure), so they work offline.
The patching and causal-tracing figures have their own scripts (ioi_patching.py,
causal_tracing_heatmaps.py).
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

import mechscope as ms

FIGURES = Path(__file__).resolve().parents[1] / "figures"
IOI = "When Mary and John went to the store, John gave a drink to"


def save(fig, name: str, description: str) -> None:
    path = ms.viz.write_html(fig, FIGURES / f"{name}.html", plotlyjs="directory",
                             description=f"{description} Made by docs/examples/figures.py on SmolLM2-135M.")
    print(f"wrote {path.relative_to(FIGURES.parents[1])} ({path.stat().st_size / 1024:.0f} KiB)")


def hooked_model(model: ms.HookedModel) -> None:
    tokens = model.to_tokens(IOI)
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
    labels = [f"{i}:{t!r}" for i, t in enumerate(model.to_str_tokens(tokens[0]))]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names="blocks.23.attn.pattern")
        clean = (logits[0, -1, mary] - logits[0, -1, john]).item()
        effects = []
        for layer in range(model.cfg.n_layers):
            with model.hooks({f"blocks.{layer}.attn.out": lambda x, ctx: torch.zeros_like(x)}):
                out = model(tokens)
            effects.append((out[0, -1, mary] - out[0, -1, john]).item())
    fig = ms.viz.line(list(range(model.cfg.n_layers)), {"attention output zeroed": effects}, signed=True,
                      title=f"logit(' Mary') - logit(' John') with one layer's attention output zeroed (clean {clean:.3f})",
                      x_label="layer", y_label="logit difference")
    fig.add_hline(y=clean, line={"dash": "dot", "color": "#888"}, annotation_text="clean")
    save(fig, "attn-ablation-by-layer", f"The hooked-model page's ablation loop, every layer, on {IOI!r}.")
    pattern = cache["blocks.23.attn.pattern"][0, 3]  # [query, key]
    fig = ms.viz.heatmap(pattern, labels, labels, title="Attention pattern of L23H3 (largest direct logit attribution to Mary - John)",
                         x_label="key", y_label="query", z_label="attention")
    save(fig, "attention-pattern-L23H3", f"cache['blocks.23.attn.pattern'][0, 3] on {IOI!r}.")


def analysis(model: ms.HookedModel) -> None:
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
    lens = ms.logit_lens(model, IOI, target=mary)
    save(lens.plot(), "logit-lens-ioi", f"ms.logit_lens(model, {IOI!r}, target=' Mary').plot(): log-prob of ' Mary' "
                                         "read at every residual point; each cell shows the lens's top token.")
    dla = ms.direct_logit_attribution(model, IOI, (mary, john))
    save(dla.plot(), "dla-ioi", "ms.direct_logit_attribution(model, prompt, (' Mary', ' John')).plot(): every "
                                f"component's share of the logit difference {dla.logit.item():.4f}.")
    tokens = ms.repeated_random_tokens(50, batch=4, seed=0)
    scores = ms.head_scores(model, tokens)
    save(scores.plot(), "head-scores", "ms.head_scores(model, ms.repeated_random_tokens(50, batch=4, seed=0)).plot(): "
                                       "attention mass of every head on each detector's keys.")


def tasks(model: ms.HookedModel) -> None:
    from mechscope.data.greater_than import greater_than, greater_than_prob_diff

    task = greater_than(model, 16, seed=0)
    start = time.perf_counter()
    result = ms.activation_patching(model, task.pairs, "blocks.*.resid_pre", metric=greater_than_prob_diff(task),
                                    answer_logits_only=False)
    result.pos_labels = model.to_str_tokens(task.pairs.clean[0])
    print(f"greater-than residual patching: {time.perf_counter() - start:.0f} s")
    save(result.plot(), "greater-than-resid-patching",
         "Activation patching of resid_pre on 16 greater-than prompts (01 corruption, denoising), metric "
         "P(later year) - P(not later), normalised: 0 = corrupted, 1 = clean. The last two positions are the "
         "tens digit's and the units digit's predictions (docs/tasks.md).")


def adapters(model: ms.HookedModel) -> None:
    tokens = model.to_tokens(IOI)
    eager = copy.deepcopy(model.hf)
    eager.set_attn_implementation("eager")
    names = [f"blocks.{l}.resid_post" for l in range(model.cfg.n_layers - 1)]
    with torch.no_grad():
        hidden = eager(tokens, output_hidden_states=True).hidden_states  # [embeddings, block 0, ...]
        _, fast = model.run_with_cache(tokens, names)  # SDPA, the model's own path
        _, routed = model.run_with_cache(tokens, names + ["blocks.*.attn.pattern"])  # explicit attention everywhere
    series = {
        "hooked, no hooks (the model's own SDPA) vs HF eager": [(fast[n] - hidden[l + 1]).abs().max().item() for l, n in enumerate(names)],
        "hooked, patterns cached (explicit attention) vs HF eager": [
            (routed[n] - hidden[l + 1]).abs().max().item() for l, n in enumerate(names)],
    }
    fig = ms.viz.line(list(range(len(names))), series, title="Max |resid_post - HF hidden state| per layer "
                      "(the last layer is left out: HF's last hidden state is already normalised)",
                      x_label="layer", y_label="max abs difference")
    fig.update_yaxes(type="log", exponentformat="e")
    save(fig, "adapter-parity-smollm2", f"The llama adapter on the bundled model, prompt {IOI!r}: every residual "
                                        "stream against the plain Hugging Face model's with eager attention.")


def sae(model: ms.HookedModel) -> None:
    from mechscope.data.corpora import packed_windows, wikipedia
    from mechscope.sae.store import StoreSpec, harvest_to_disk, training_batches

    hook = "blocks.15.resid_post"
    windows = packed_windows(model.tokenizer, wikipedia()[:20], 128)
    train, held_out = windows[:640], windows[-32:]  # 82k training tokens: a short run, for the figure
    sae_ = ms.SAE(ms.SAEConfig(d_in=576, d_sae=2304, architecture="topk", k=32, hook_name=hook,
                               model_name="smollm2-135m"))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        spec = StoreSpec("smollm2-135m", (hook,), context_size=128, corpus="wikipedia[:20][:640]")
        harvest_to_disk(model, spec, train, Path(folder) / "acts", batch_size=16, progress=False)
        config = ms.TrainConfig(steps=400, lr=1e-3, warmup_steps=20, normalize=True, dead_window_tokens=100_000)
        ms.train_sae(sae_, training_batches(Path(folder) / "acts", spec, 1024, epochs=20), config, progress=False)
    print(f"SAE harvest + training: {time.perf_counter() - start:.0f} s")
    result = ms.evaluate_sae(model, sae_, held_out, batch_size=8)
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in result.to_dict().items()})
    setup = (f"A TopK SAE (k 32, 2,304 latents) on {hook}, trained for 400 steps of 1,024 activations from "
             f"{len(train)} Wikipedia windows of 128 tokens (a short run, for the figure; FVE {result.fve:.2f}, "
             f"CE recovered {result.ce_recovered:.2f}), evaluated on {result.n_tokens:,} held-out tokens.")
    save(result.plot(), "sae-density", f"ms.evaluate_sae(...).plot(). {setup}")
    features = ms.collect_features(model, sae_, held_out, progress=False)
    j = int(features.top(1, by="max_activation", density=lambda d: (d > 0.001) & (d < 0.05))["latent"].iloc[0])
    report = features.latent(model, sae_, j, n_top=8, n_quantiles=3, per_quantile=2)
    save(report.plot(), "sae-latent", f"features.latent(model, sae, {j}).plot(): the top contexts and examples at "
                                      f"three activation quantiles of latent {j}, aligned on their peak. {setup}")


def circuits(model: ms.HookedModel) -> None:
    pairs = ms.ioi(model, 8)
    scores = ms.eap_ig(model, pairs, steps=5)
    circuit = scores.top_n(300, prune=True)
    save(circuit.plot(kind="graph"), "ioi-circuit-graph",
         "The 300 edges with the largest EAP-IG-inputs scores (5 steps, 8 IOI prompts, ABC corruption, logit "
         "difference), pruned to the edges on a path from the input to the logits: heads by layer, width by |score|.")
    curve = ms.faithfulness(model, pairs, scores)
    save(curve.plot(), "ioi-circuit-faithfulness",
         "Faithfulness f(C) of the EAP-IG circuits at 0.1-100 % of the edges (signed, absolute and random "
         "rankings, bootstrap 95 % intervals over the 8 prompts).")


PAGES = {"hooked-model": hooked_model, "analysis": analysis, "tasks": tasks, "adapters": adapters, "sae": sae,
         "circuits": circuits}


def main(pages: list[str]) -> None:
    model = ms.load("smollm2-135m")
    for page in pages or list(PAGES):
        PAGES[page](model)


if __name__ == "__main__":
    main(sys.argv[1:])
