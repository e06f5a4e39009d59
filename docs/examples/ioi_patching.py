"""Regenerates the IOI patching figures linked from docs/patching.md (run from the repo root):

    python docs/examples/ioi_patching.py

24 IOI prompts (template 0, ABC corruption) on the bundled SmolLM2-135M, denoising:
residual stream per (layer, position), every head, and attribution patching of every head.
Writes interactive plotly figures to docs/figures/ (plotly.js stored once beside them).
"""

from __future__ import annotations

from pathlib import Path

import torch

import mechscope as ms

FIGURES = Path(__file__).resolve().parents[1] / "figures"
SETUP = "SmolLM2-135M, 24 IOI prompts (template 0, ABC corruption), denoising; made by docs/examples/ioi_patching.py."


def main() -> None:
    model = ms.load("smollm2-135m")
    pairs = ms.ioi(model, 24)
    resid = ms.activation_patching(model, pairs, "blocks.*.resid_pre")
    resid.pos_labels = model.to_str_tokens(pairs.clean[0])  # prompt 0's tokens name the positions
    heads = ms.activation_patching(model, pairs, "blocks.*.attn.z")
    approx = ms.attribution_patching(model, pairs, "blocks.*.attn.z")
    r = torch.corrcoef(torch.stack([heads.values.flatten(), approx.values.flatten()]))[0, 1]
    top = heads.top(6)
    named = ", ".join(f"L{l}H{h} {v:+.2f}" for l, h, v in zip(top.layer, top["head"], top.normalized))
    attribution = f"Attribution patching of every head (Pearson r {r:.3f} with exact head patching)."
    figures = {
        "ioi-resid-patching": (resid.plot(), "Restoring the clean residual stream (resid_pre) at one (layer, position)."),
        "ioi-head-patching": (heads.plot(), f"Restoring one clean head (z at all positions). Top: {named}."),
        "ioi-head-attribution": (approx.plot(), attribution),
    }
    for name, (fig, caption) in figures.items():
        path = ms.viz.write_html(fig, FIGURES / f"{name}.html", plotlyjs="directory", description=f"{caption} {SETUP}")
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    print("top heads:", named, f"| attribution r = {r:.3f}")


if __name__ == "__main__":
    main()
