"""TransformerLens rows for bench/analysis.py, run inside .venv-peers (never imported by mechscope).

Reads the tokens from --tokens (torch.save'd LongTensor) and loads the bundled model into a
TransformerBridge, prints ``ready``, then runs one task per line read from stdin and answers
each with a JSON line ``{"task": ..., "seconds": ...}``, so the caller can interleave these
runs with its own (two cores shared with other work make back-to-back blocks unfair). Tasks:

- ``lens``: the logit lens as one writes it with TransformerLens (ln_final recomputed at each
  of the 31 residual points, unembed, log_softmax, next-token log-prob);
- ``lens_full``: the same loop also taking the top-1 token and its log-prob, the rank of the
  next token and KL(final || lens) from the full log-softmax at every point;
- ``heads``: head-detector scores for the previous-token, duplicate-token and induction
  patterns computed as ``transformer_lens.head_detector.detect_head`` does.

On ``quit`` it writes the last results of each task to --out and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

MODEL_DIR = Path(os.environ.get("MECHSCOPE_CACHE") or Path.home() / ".cache" / "mechscope") / "models" / "smollm2-135m"
KINDS = {"previous_token": "previous_token_head", "duplicate_token": "duplicate_token_head",
         "induction": "induction_head"}


def _lens(bridge, tokens: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    lens = []
    for name in names:
        logprobs = torch.log_softmax(bridge.unembed(bridge.ln_final(cache[name])), dim=-1)
        lens.append(logprobs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0])
    return {"lens": torch.stack(lens)}


def _lens_full(bridge, tokens: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    logits, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    final = torch.log_softmax(logits, dim=-1)
    final_probs = final.exp()
    out: dict[str, list[torch.Tensor]] = {"top_ids": [], "top_logprobs": [], "kl": [], "logprob": [], "rank": []}
    for name in names:
        logprobs = torch.log_softmax(bridge.unembed(bridge.ln_final(cache[name])), dim=-1)
        top = logprobs.max(-1)
        out["top_ids"].append(top.indices)
        out["top_logprobs"].append(top.values)
        out["kl"].append((final_probs * (final - logprobs)).sum(-1))
        value = logprobs[:, :-1].gather(-1, tokens[:, 1:, None])
        out["logprob"].append(value[..., 0])
        out["rank"].append((logprobs[:, :-1] > value).sum(-1))
    return {f"full.{k}": torch.stack(v) for k, v in out.items()}


def _heads(bridge, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    # detect_head tokenizes text; on token ids we run its body: one full cache per prompt,
    # TransformerLens's detection patterns and its similarity score ("mul"), averaged over prompts.
    from transformer_lens import head_detector

    n_layers = bridge.cfg.n_layers
    scores = {ours: torch.zeros(n_layers, bridge.cfg.n_heads) for ours in KINDS}
    for row in tokens:
        _, cache = bridge.run_with_cache(row[None], remove_batch_dim=True)
        for ours, theirs in KINDS.items():
            pattern = getattr(head_detector, f"get_{theirs}_detection_pattern")(row[None].cpu())
            for layer in range(n_layers):
                attention = cache["pattern", layer, "attn"]
                for head in range(bridge.cfg.n_heads):
                    scores[ours][layer, head] += head_detector.compute_head_attention_similarity_score(
                        attention[head], detection_pattern=pattern, exclude_bos=False,
                        exclude_current_token=False, error_measure="mul") / len(tokens)
    return {f"heads.{k}": v.float() for k, v in scores.items()}


def main() -> None:
    from transformer_lens.model_bridge import TransformerBridge

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    tokens = torch.load(args.tokens, weights_only=True)
    bridge = TransformerBridge.boot_transformers(str(MODEL_DIR), device="cpu", dtype=torch.float32)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(bridge.cfg.n_layers)]
    tasks = {"lens": lambda: _lens(bridge, tokens, names), "lens_full": lambda: _lens_full(bridge, tokens, names),
             "heads": lambda: _heads(bridge, tokens)}
    results: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        _lens(bridge, tokens[:1, :8], names)  # warm-up
        print("ready", flush=True)
        for line in sys.stdin:
            task = line.strip()
            if task == "quit":
                break
            start = time.perf_counter()
            results.update(tasks[task]())
            print(json.dumps({"task": task, "seconds": time.perf_counter() - start}), flush=True)
    torch.save(results, args.out)


if __name__ == "__main__":
    main()
