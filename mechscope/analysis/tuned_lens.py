"""The tuned lens (Belrose et al. 2023): an affine translator per layer before the unembedding.

Translator ``l`` maps the residual stream at point ``l`` (``blocks.0.resid_pre`` and every
``resid_post`` but the last) to a guess of the final residual; the lens reads
``unembed(translator(h))``. Translators start at the identity (so an untrained tuned lens
*is* the logit lens) and are trained to minimise KL(final distribution || lens
distribution) on a corpus. Training harvests the residual streams once, then samples
(tokens, layers) per step deterministically from the seed, checkpoints atomically and
resumes exactly. Position 0 is left out everywhere: it is an attention sink whose
residual norm is two orders of magnitude above the rest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..models.hooked import HookedModel


def lens_points(model: HookedModel) -> list[str]:
    """Residual points a tuned lens translates: the embedding and every block output but the last."""
    return ["blocks.0.resid_pre"] + [f"blocks.{l}.resid_post" for l in range(model.cfg.n_layers - 1)]


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


def harvest(model: HookedModel, tokens: torch.Tensor, *, batch_size: int = 8,
            store_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals at the lens points `[n_tokens, n_points, d_model]` and the final residual
    `[n_tokens, d_model]` for every token of ``tokens`` `[n_seq, seq]` except position 0."""
    points = lens_points(model)
    final = f"blocks.{model.cfg.n_layers - 1}.resid_post"
    residuals, finals = [], []
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[start : start + batch_size], points + [final])
        residuals.append(torch.stack([cache[p][:, 1:] for p in points], dim=2).flatten(0, 1).to(store_dtype))
        finals.append(cache[final][:, 1:].flatten(0, 1).to(store_dtype))
    return torch.cat(residuals), torch.cat(finals)


def _kl(final_logprobs: torch.Tensor, lens_logprobs: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(final || lens), both `[tokens, vocab]` log-probabilities."""
    return (final_logprobs.exp() * (final_logprobs - lens_logprobs)).sum(-1).mean()


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
    residuals, finals = harvest(model, tokens)
    lens = TunedLens(lens_points(model), model.cfg.d_model).to(model.device)
    optimizer = torch.optim.Adam(lens.parameters(), lr=lr)
    checkpoint = Path(out) / "checkpoint.safetensors" if out is not None else None
    settings = {"steps": steps, "batch_tokens": batch_tokens, "points_per_step": points_per_step, "lr": lr,
                "seed": seed, "n_tokens": int(residuals.shape[0]), "bf16_matmuls": bf16_matmuls}
    start = 0
    if checkpoint is not None and resume and checkpoint.is_file():
        state, meta = load_checkpoint(checkpoint, optimizer)
        if meta["settings"] != settings:
            raise ValueError(f"checkpoint {checkpoint} was written with other settings: {meta['settings']}")
        lens.load_state_dict(state)
        start = meta["step"]
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    n_tokens, n_points = residuals.shape[:2]
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, desc="tuned lens")
    for step in bar:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        rows = torch.randint(0, n_tokens, (batch_tokens,), generator=generator)
        chosen = torch.randperm(n_points, generator=generator)[:points_per_step].tolist()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_matmuls):
            with torch.no_grad():
                target = torch.log_softmax(model.unembed(finals[rows].to(model.dtype)).float(), -1)
            loss = sum(
                _kl(target, torch.log_softmax(model.unembed(lens.translate(p, residuals[rows, p].to(model.dtype))).float(), -1))
                for p in chosen
            ) / len(chosen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(kl=f"{loss.item():.3f}")
        done = step + 1
        if checkpoint is not None and (done % checkpoint_every == 0 or done == steps or done == stop_after):
            save_checkpoint(checkpoint, lens.state_dict(), {"settings": settings, "step": done}, optimizer)
        if stop_after is not None and done >= stop_after:
            break
    if out is not None and (stop_after is None or stop_after >= steps):
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
            residuals, finals = harvest(model, tokens[start : start + batch_size], batch_size=batch_size)
            target = torch.log_softmax(model.unembed(finals).float(), -1)
            for p in range(len(points)):
                resid = residuals[:, p] if lens is None else lens.translate(p, residuals[:, p])
                lp = torch.log_softmax(model.unembed(resid).float(), -1)
                totals[p] += _kl(target, lp).item() * finals.shape[0]
            count += finals.shape[0]
    return (totals / count).float()
