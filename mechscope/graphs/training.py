"""Training every layer's transcoder from one streaming harvest: each step runs the model on
a few windows of text and trains all the transcoders of a `TranscoderSet` on the tokens of
that one forward (each reads its layer's MLP input and reconstructs its MLP output), so
nothing is cached on disk and the model runs once for all layers.

    transcoders = ms.TranscoderSet.fresh(model, d_sae=2304, k=32)
    ms.train_transcoders(model, transcoders, windows, ms.TrainConfig(steps=2000, lr=1e-3, normalize=True),
                         out="runs/tc", windows_per_step=32)

Step ``i`` reads windows ``order[i * w : (i + 1) * w]`` of a seeded permutation of the
windows (a new one each epoch), so a step's data is a function of its index: a resumed run
(``resume=True``) skips the finished steps without re-running them and ends with the weights
of an uninterrupted run. The tokens of a step are shuffled together (``windows_per_step``
windows of different documents per batch); position 0, special tokens and norm outliers are
left out (`data.harvest`). One Adam optimizer holds every layer's parameters; each layer
keeps its own scales, dead-latent counters and ``b_dec`` start (`sae.train.SAETrainer`).
Under ``torchrun`` each rank harvests its share of a step's windows (gradients averaged as
for SAEs); rank 0 writes ``out/checkpoint.safetensors``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ..data.harvest import cat_chunks, harvest
from ..distributed import local_rows
from ..errors import SelectionError
from ..models.hooked import HookedModel
from ..sae.train import SAETrainer, TrainConfig, set_lr
from ..training import TrainingLoop
from .transcoders import TranscoderSet


def step_windows(n_windows: int, windows_per_step: int, step: int, seed: int) -> torch.Tensor:
    """`[windows_per_step]` indices of the windows step ``step`` reads: consecutive slices of
    a permutation of ``range(n_windows)`` drawn from ``seed + epoch`` (the last partial slice
    of an epoch is skipped)."""
    per_epoch = n_windows // windows_per_step
    if per_epoch < 1:
        raise SelectionError(f"{n_windows} windows cannot fill a step of {windows_per_step}: give more text "
                             "or fewer windows per step")
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed + epoch))
    return order[index * windows_per_step : (index + 1) * windows_per_step]


def train_transcoders(model: HookedModel, transcoders: TranscoderSet, windows: torch.Tensor, config: TrainConfig, *,
                      windows_per_step: int = 32, forward_batch: int = 8, outlier_ratio: float | None = 10.0,
                      out: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
                      on_checkpoint: Callable[[int], None] | None = None) -> TranscoderSet:
    """Train every transcoder of ``transcoders`` in place on ``windows`` (token ids
    `[n_windows, ctx]`) for ``config.steps`` steps (see the module docstring); returns them
    (eval mode, reading and writing the model's own activations).

    windows_per_step: windows harvested per step (their kept tokens are the batch: about
      ``windows_per_step * (ctx - 1)`` rows). forward_batch: windows per forward pass.
    """
    transcoders.check(model, every_layer=False)
    if windows.ndim != 2 or windows.dtype != torch.long:
        raise SelectionError(f"windows must be token ids [n_windows, ctx], got {tuple(windows.shape)} {windows.dtype}")
    if windows_per_step < 1 or forward_batch < 1:
        raise SelectionError(f"windows_per_step and forward_batch must be >= 1, got {windows_per_step}, {forward_batch}")
    if resume and out is None:
        raise SelectionError("resume=True needs the run's out folder")
    step_windows(len(windows), windows_per_step, 0, config.seed)  # enough windows for one step
    torch.manual_seed(config.seed)
    trainers = {layer: SAETrainer(tc, config) for layer, tc in transcoders.items()}
    optimizer = torch.optim.Adam([{"params": t.params} for t in trainers.values()], lr=config.lr,
                                 betas=(0.9, 0.999))
    settings = {"config": asdict(config), "transcoders": {str(l): tc.cfg.to_dict() for l, tc in transcoders.items()},
                "windows": list(windows.shape), "windows_per_step": windows_per_step, "outlier_ratio": outlier_ratio}
    loop = TrainingLoop(config.steps, optimizer=optimizer,
                        checkpoint=Path(out) / "checkpoint.safetensors" if out is not None else None,
                        checkpoint_every=config.checkpoint_every, resume=resume, progress=progress,
                        settings=settings, desc=f"{len(trainers)} transcoders")
    restored = loop.restore()
    if restored is not None:
        for layer, trainer in trainers.items():
            trainer.restore(restored, loop.meta["counters"][str(layer)], prefix=f"layer{layer}.")
    names = [name for tc in transcoders for name in (tc.cfg.hook_name, tc.cfg.output_hook_name)]

    def step(index: int) -> dict[str, str] | None:
        chosen = local_rows(windows[step_windows(len(windows), windows_per_step, index, config.seed)])
        tokens = cat_chunks(list(harvest(model, names, chosen.split(forward_batch), outlier_ratio=outlier_ratio)))
        order = torch.randperm(len(tokens[names[0]]), generator=torch.Generator().manual_seed(config.seed + index))
        set_lr(optimizer, config, index)
        total, shown = 0.0, {}
        fve = []
        for layer, trainer in trainers.items():
            tc = transcoders[layer]
            loss, fields = trainer.loss(index, tokens[tc.cfg.hook_name][order], tokens[tc.cfg.output_hook_name][order],
                                        show=loop.show_progress)
            total = total + loss
            if fields:
                fve.append(float(fields["FVE"]))
                shown = fields
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        for trainer in trainers.values():
            trainer.after_backward()
        optimizer.step()
        for trainer in trainers.values():
            trainer.after_step()
        if not loop.show_progress:
            return None
        return {"tokens": str(len(order)), "mean FVE": f"{sum(fve) / len(fve):.3f}", "last L0": shown["L0"]}

    def state() -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {}
        for layer, trainer in trainers.items():
            tensors.update(trainer.state(prefix=f"layer{layer}."))
        return tensors, {"counters": {str(layer): trainer.counters for layer, trainer in trainers.items()}}

    loop.run(step, state, on_checkpoint=on_checkpoint)
    for trainer in trainers.values():
        trainer.finish()
    return transcoders
