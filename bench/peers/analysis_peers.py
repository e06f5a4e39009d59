"""TransformerLens rows for bench/analysis.py, run inside .venv-peers (never imported by mechscope).

Reads the tokens from --tokens (torch.save'd LongTensor), computes with TransformerBridge:
the logit lens (ln_final recomputed at each of the 31 residual points, next-token log-prob)
and head-detector scores for the previous-token, duplicate-token and induction patterns
computed as ``transformer_lens.head_detector.detect_head`` does.
Writes the results to --out and prints the timings as JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

MODEL_DIR = Path(os.environ.get("MECHSCOPE_CACHE") or Path.home() / ".cache" / "mechscope") / "models" / "smollm2-135m"
KINDS = {"previous_token": "previous_token_head", "duplicate_token": "duplicate_token_head",
         "induction": "induction_head"}


def main() -> None:
    from transformer_lens import head_detector
    from transformer_lens.model_bridge import TransformerBridge

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    tokens = torch.load(args.tokens, weights_only=True)
    bridge = TransformerBridge.boot_transformers(str(MODEL_DIR), device="cpu", dtype=torch.float32)
    n_layers = bridge.cfg.n_layers
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(n_layers)]
    timings = {}
    with torch.no_grad():
        start = time.perf_counter()
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
        lens = []
        for name in names:
            logprobs = torch.log_softmax(bridge.unembed(bridge.ln_final(cache[name])), dim=-1)
            lens.append(logprobs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0])
        timings["lens"] = time.perf_counter() - start
        # detect_head tokenizes text; on token ids we run its body: one full cache per prompt,
        # TransformerLens's detection patterns and its similarity score ("mul"), averaged over prompts.
        start = time.perf_counter()
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
        timings["heads"] = time.perf_counter() - start
    torch.save({"lens": torch.stack(lens), **{f"heads.{k}": v.float() for k, v in scores.items()}}, args.out)
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
