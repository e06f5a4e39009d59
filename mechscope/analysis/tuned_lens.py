"""The tuned lens (Belrose et al. 2023): an affine translator per layer before the unembedding.

Translator ``l`` maps the residual stream at point ``l`` (``blocks.0.resid_pre`` and every
``resid_post`` but the last) to a guess of the final residual; the lens reads
``unembed(translator(h))``. Translators start at the identity (so an untrained tuned lens
*is* the logit lens) and are trained to minimise KL(final distribution || lens
distribution) on a corpus. Training harvests the residual streams once
(`mechscope.data.harvest`), then samples (tokens, layers) per step deterministically from the
seed, checkpoints atomically and resumes exactly (`mechscope.training`). Position 0 is left
out everywhere: it is an attention sink whose residual norm is two orders of magnitude above
the rest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.harvest import harvest_all
from ..models.functional import kl_divergence
from ..models.hooked import HookedModel
from ..training import TrainingLoop, step_generator


def lens_points(model: HookedModel) -> list[str]:
    """Residual points a tuned lens translates: the embedding and every block output but the last."""
    return ["blocks.0.resid_pre"] + [f"blocks.{l}.resid_post" for l in range(model.cfg.n_layers - 1)]


def _harvest(model: HookedModel, tokens: torch.Tensor, batch_size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The residuals at the lens points (one `[n_tokens, d_model]` each) and the final residual
    `[n_tokens, d_model]` for every token of ``tokens`` `[n_seq, seq]` but position 0, on the CPU."""
    points, final = lens_points(model), f"blocks.{model.cfg.n_layers - 1}.resid_post"
    acts = harvest_all(model, [*points, final], tokens, batch_size=batch_size, skip_special=False)
    return [acts[p] for p in points], acts[final]


class TunedLens(nn.Module):
    """One ``nn.Linear(d_model, d_model)`` per point in ``labels``, initialised to the identity."""

    def __init__(self, labels: list[str], d_model: int):
        super().__init__()
        self.labels = list(labels)
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in labels)
        with torch.no_grad():
            for translator in self.translators:
                translator.weight.copy_(torch.eye(d_model))
                translator.bias.zero_()

    def translate(self, index: int, resid: torch.Tensor) -> torch.Tensor:
        """`[..., d_model]` -> `[..., d_model]` through translator ``index``."""
        translator = self.translators[index]
        return nn.functional.linear(resid, translator.weight.to(resid.dtype), translator.bias.to(resid.dtype))

    def save(self, path: str | os.PathLike) -> None:
        """``path/tuned_lens.safetensors`` + ``path/tuned_lens.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "tuned_lens.safetensors"))
        d_model = self.translators[0].weight.shape[0]
        (path / "tuned_lens.json").write_text(json.dumps({"labels": self.labels, "d_model": d_model}, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TunedLens:
        path = Path(path)
        config = json.loads((path / "tuned_lens.json").read_text())
        lens = cls(config["labels"], config["d_model"])
        lens.load_state_dict(load_file(str(path / "tuned_lens.safetensors")))
        return lens


def train_tuned_lens(model: HookedModel, tokens: torch.Tensor, *, steps: int = 300, batch_tokens: int = 512,
                     points_per_step: int = 6, lr: float = 1e-3, seed: int = 0, out: str | os.PathLike | None = None,
                     resume: bool = True, checkpoint_every: int = 50, progress: bool = True,
                     bf16_matmuls: bool = False, stop_after: int | None = None) -> TunedLens:
    """Train a tuned lens on ``tokens`` `[n_seq, seq]` (e.g. `corpora.token_windows`).

    Each step draws ``batch_tokens`` harvested tokens and ``points_per_step`` lens points
    (all translators are independent, so sampling points is unbiased) and takes one Adam
    step on their summed KL. ``out``: directory for checkpoints and the final lens.
    ``bf16_matmuls``: run the unembedding matmuls in bfloat16 (about 3x faster on CPUs with
    bf16 units; KL is still computed in fp32). ``stop_after`` ends after that many steps.
    """
    residuals, finals = _harvest(model, tokens, batch_size=8)
    lens = TunedLens(lens_points(model), model.cfg.d_model).to(model.device)
    optimizer = torch.optim.Adam(lens.parameters(), lr=lr)
    settings = {"steps": steps, "batch_tokens": batch_tokens, "points_per_step": points_per_step, "lr": lr,
                "seed": seed, "n_tokens": int(finals.shape[0]), "bf16_matmuls": bf16_matmuls}
    checkpoint = Path(out) / "checkpoint.safetensors" if out is not None else None
    loop = TrainingLoop(steps, optimizer=optimizer, checkpoint=checkpoint, checkpoint_every=checkpoint_every, settings=settings, resume=resume, stop_after=stop_after,
                        progress=progress, desc="tuned lens")
    restored = loop.restore()
    if restored is not None:
        lens.load_state_dict(restored)
    n_tokens, n_points = finals.shape[0], len(residuals)

    def on_device(acts: torch.Tensor) -> torch.Tensor:
        return acts.to(model.device, model.dtype)

    def step(index: int) -> dict[str, str] | None:
        generator = step_generator(seed, index)
        rows = torch.randint(0, n_tokens, (batch_tokens,), generator=generator)
        chosen = torch.randperm(n_points, generator=generator)[:points_per_step].tolist()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_matmuls):
            with torch.no_grad():
                target = torch.log_softmax(model.unembed(on_device(finals[rows])).float(), -1)
            loss = sum(
                kl_divergence(target, torch.log_softmax(
                    model.unembed(lens.translate(p, on_device(residuals[p][rows]))).float(), -1)).mean()
                for p in chosen
            ) / len(chosen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"kl": f"{loss.item():.3f}"} if loop.show_progress else None

    if loop.run(step, lambda: (lens.state_dict(), {})) and out is not None:
        lens.save(out)
    return lens


def lens_kl(model: HookedModel, tokens: torch.Tensor, lens: TunedLens | None = None, *,
            batch_size: int = 4) -> torch.Tensor:
    """Mean KL(final || lens) per lens point `[n_points]` on ``tokens`` (position 0 excluded);
    the logit lens when ``lens`` is None."""
    points = lens_points(model)
    totals = torch.zeros(len(points), dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for start in range(0, tokens.shape[0], batch_size):
            residuals, finals = _harvest(model, tokens[start : start + batch_size], batch_size)
            finals = finals.to(model.device)
            target = torch.log_softmax(model.unembed(finals).float(), -1)
            for p in range(len(points)):
                resid = residuals[p].to(model.device)
                resid = resid if lens is None else lens.translate(p, resid)
                lp = torch.log_softmax(model.unembed(resid).float(), -1)
                totals[p] += kl_divergence(target, lp).mean().item() * finals.shape[0]
            count += finals.shape[0]
    return (totals / count).float()
