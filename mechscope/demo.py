"""``mechscope demo``: the main job on the bundled model, printed as a short report."""

from __future__ import annotations

import time

import torch

from .models.hooked import HookedModel
from .models.loading import load

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"


def ioi_report(model: HookedModel, prompt: str = IOI_PROMPT, correct: str = " Mary", wrong: str = " John") -> str:
    """Top-5 next tokens, the logit difference and the per-layer logit-lens rank of ``correct``."""
    tokens = model.to_tokens(prompt)
    correct_id, wrong_id = model.to_single_token(correct), model.to_single_token(wrong)
    logits, cache = model.run_with_cache(tokens, names="blocks.*.resid_post", positions=-1)
    last = logits[0, -1]
    probs = last.softmax(-1)
    lines = [f"Prompt: {prompt!r}", "", "Top-5 next tokens:"]
    top = probs.topk(5)
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        lines.append(f"  {model.to_string([i])!r:>12}  p={p:.4f}  logit={last[i].item():.3f}")
    lines += ["", f"logit({correct!r}) - logit({wrong!r}) = {(last[correct_id] - last[wrong_id]).item():+.4f}", ""]
    lines.append(f"Logit lens: rank of {correct!r} (0 = top) after each layer")
    with torch.no_grad():
        lens = model.unembed(cache.stack("blocks.*.resid_post"))  # [n_layers, batch, d_vocab]
    ranks = (lens[:, 0] > lens[:, 0, correct_id : correct_id + 1]).sum(-1).tolist()
    for layer, rank in enumerate(ranks):
        lines.append(f"  layer {layer:2d}: rank {rank:6d}")
    return "\n".join(lines)


def main(model_name: str = "smollm2-135m") -> None:
    start = time.perf_counter()
    model = load(model_name)
    print(f"Loaded {model} in {time.perf_counter() - start:.1f} s\n")
    print(ioi_report(model))
