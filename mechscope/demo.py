"""``mechscope demo``: the main job on the bundled model, printed as a short report."""

from __future__ import annotations

import time

import torch

from .analysis.dla import direct_logit_attribution
from .analysis.heads import head_scores
from .analysis.lens import logit_lens
from .data.repeated import repeated_random_tokens
from .models.hooked import HookedModel, at
from .models.loading import load

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"


def ioi_report(model: HookedModel, prompt: str = IOI_PROMPT, correct: str = " Mary", wrong: str = " John") -> str:
    """Top-5 next tokens, the logit difference, the logit lens and direct logit attribution."""
    tokens = model.to_tokens(prompt)
    correct_id, wrong_id = model.to_single_token(correct), model.to_single_token(wrong)
    logits = model(tokens).detach()
    last = logits[0, -1]
    probs = last.softmax(-1)
    lines = [f"Prompt: {prompt!r}", "", "Top-5 next tokens:"]
    top = probs.topk(5)
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        lines.append(f"  {model.to_string([i])!r:>12}  p={p:.4f}  logit={last[i].item():.3f}")
    lines += ["", f"logit({correct!r}) - logit({wrong!r}) = {(last[correct_id] - last[wrong_id]).item():+.4f}", ""]
    lines.append(f"Logit lens at the last position: rank of {correct!r} (0 = top), top token, KL to the output")
    lens = logit_lens(model, tokens, target=correct_id, k=1)
    for i, label in enumerate(lens.labels):
        top = model.to_string([int(lens.top_ids[i, 0, -1, 0])])
        lines.append(f"  {label:22s} rank {int(lens.target_rank[i, 0, -1]):6d}  top {top!r:>14}  "
                     f"KL {lens.kl_to_final[i, 0, -1].item():7.3f}")
    dla = direct_logit_attribution(model, tokens, (correct_id, wrong_id))
    lines += ["", f"Direct logit attribution of the logit difference (parts sum to {dla.total.item():+.4f}):"]
    top = dla.top(8, prompt=0)
    for name, value in zip(top.component, top.value):
        lines.append(f"  {name:14s} {value:+.3f}")
    return "\n".join(lines)


def heads_report(model: HookedModel, n_tokens: int = 50, batch: int = 4) -> str:
    """Top heads per detector on repeated random tokens, and what ablating induction heads does."""
    tokens = repeated_random_tokens(n_tokens, batch=batch, seed=0)
    scores = head_scores(model, tokens)
    lines = [f"Attention heads on {batch} x repeated random tokens ({n_tokens} tokens twice):"]
    for kind in scores.scores:
        ranked = scores.top(5, kind=kind)
        top = ", ".join(f"L{l}H{h} {s:.2f}" for l, h, s in zip(ranked.layer, ranked["head"], ranked.score))
        lines.append(f"  {kind:16s} {top}")

    def second_copy_loss(heads) -> float:
        hooks = {at_head: (lambda z, ctx: torch.zeros_like(z)) for at_head in heads}
        with torch.no_grad(), model.hooks(hooks):
            logits = model(tokens)
        second = logits[:, n_tokens:-1].flatten(0, 1)
        return torch.nn.functional.cross_entropy(second, tokens[:, n_tokens + 1:].flatten()).item()

    ranked = scores.top(5, kind="induction")
    top = [at(f"blocks.{l}.attn.z", heads=int(h)) for l, h in zip(ranked.layer, ranked["head"])]
    lines.append(f"  loss on the repeated half: {second_copy_loss([]):.2f} nats; "
                 f"with the top-5 induction heads zero-ablated: {second_copy_loss(top):.2f}")
    return "\n".join(lines)


def main(model_name: str = "smollm2-135m") -> None:
    start = time.perf_counter()
    model = load(model_name)
    print(f"Loaded {model} in {time.perf_counter() - start:.1f} s\n")
    print(ioi_report(model))
    print()
    print(heads_report(model))
