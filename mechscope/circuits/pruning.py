"""Edge pruning (Bhaskar et al. 2024): a learned hard-concrete mask on every real edge, trained
so the circuit's outputs match the full model's while a Lagrangian drives the expected edge
density down to ``1 - sparsity``.

Each real edge has a logit ``log_alpha``; a training step draws the gates

    z = clamp(sigmoid((log u - log(1 - u) + log_alpha) / beta) * (zeta - gamma) + gamma, 0, 1),  u ~ U(0, 1)

(Louizos et al. 2018's hard-concrete: ``beta = 2/3``, ``gamma = -0.1``, ``zeta = 1.1``) and runs the
clean prompts with each edge carrying ``z`` of its current value and ``1 - z`` of its ablated one
(`interventions.EdgePatch` with ``W = 1 - z``, gradients flowing to ``log_alpha``). The loss is

    objective + lambda_1 g + lambda_2 g^2,        g = (d - t) * n_edges / 1000

with ``d`` the expected density (the mean over real edges of P(z > 0) =
``sigmoid(log_alpha - beta log(-gamma / zeta))``) and ``t`` the target density, ramped
linearly from 1 to ``1 - sparsity`` over the first ``warmup`` steps; the multipliers
``lambda`` take gradient *ascent* steps, so the constraint is met rather than traded off.
The objective is the KL divergence from the full model's next-token distribution at the
answer positions (the paper's), or, for a task ``metric``, the squared deviation of the
circuit's metric from the full model's in units of ``|m(clean) - m(corrupted)|``.

The result is `CircuitScores` of kind ``"keep"``: the learned ``log_alpha`` (larger = keep).
At test time a gate is deterministic, ``z = clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)``,
so ``scores.threshold(0.0)`` (z > 0.5) is the learned circuit; `faithfulness` ranks edges by it.
Training is a resumable `TrainingLoop` (checkpoints in ``out``, tqdm progress); under
``torchrun`` each rank trains on a contiguous share of the prompts and the mask's gradients are
averaged over the ranks every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..causal.metrics import answer_logits_view, checked_metric, kl_to
from ..causal.patching import run_and_source
from ..data.tasks import PromptPairs
from ..distributed import average_gradients
from ..errors import SelectionError
from ..training import TrainingLoop, step_generator
from .graph import Graph
from .interventions import ABLATIONS, ablated_sources, patched_logits, pruned_weights
from .result import CircuitScores
from .sharding import chunks, gathered, local_pairs, mean_sources

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1


def sample_gates(log_alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hard-concrete gates `[...]` in [0, 1] drawn for logits ``log_alpha`` `[...]` (differentiable)."""
    u = torch.rand(log_alpha.shape, generator=generator).clamp(1e-6, 1 - 1e-6).to(log_alpha.device)
    s = torch.sigmoid((u.log() - (-u).log1p() + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def deterministic_gates(log_alpha: torch.Tensor) -> torch.Tensor:
    """The test-time gates: ``clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)``."""
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def open_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(gate > 0) per logit: the expected L0 of each gate."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


def edge_pruning(model, pairs: PromptPairs, metric: Callable | None = None, *, sparsity: float = 0.95,
                 steps: int = 400, lr: float = 0.3, lagrangian_lr: float = 0.5, warmup: int | None = None,
                 init: float = 1.0, ablation: str = "corrupted", batch_size: int | None = None, seed: int = 0,
                 out: str | Path | None = None, resume: bool = False, checkpoint_every: int = 100,
                 progress: bool = True, buffer_dtype: torch.dtype | None = None,
                 on_checkpoint: Callable[[int], None] | None = None) -> CircuitScores:
    """Learn a circuit keeping about ``1 - sparsity`` of the real edges (see the module docstring).

    metric: None (KL from the full model at the answer positions) or a task metric
      ``(logits, pairs) -> [n]`` whose full-model value the circuit should reproduce.
    steps: optimisation steps; each is one patched forward and backward of one chunk of
      ``batch_size`` prompts (chunks in turn). warmup: steps over which the target density
      falls to ``1 - sparsity`` (default half of ``steps``). init: the logits' starting value
      (every edge open). lr / lagrangian_lr: Adam's step sizes for the logits and for the
      multipliers; the constraint ``g`` counts thousands of expected open edges above the
      target, so each gate feels it alike on graphs of 100 or 70,000 edges. out / resume / checkpoint_every / on_checkpoint: checkpoints, as in
      `TrainingLoop` (a resumed run ends with the logits of an uninterrupted one).
    Returns `CircuitScores` of kind "keep" (``scores``: log_alpha `[n_src, n_dst]`, 0 off the
    real edges); ``.threshold(0.0)`` is the learned circuit.
    """
    if not 0.0 <= sparsity < 1.0:
        raise SelectionError(f"sparsity must be in [0, 1), got {sparsity}")
    if ablation not in ABLATIONS:
        raise SelectionError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    if resume and out is None:
        raise SelectionError("resume=True needs the run's out folder")
    run_and_source(pairs, "noise", model)  # checks pairs and answers
    task = None if metric is None else checked_metric(metric)
    graph = Graph.from_model(model)
    real = graph.real.to(model.device)
    n_edges = graph.n_edges
    warmup = steps // 2 if warmup is None else warmup
    n_total, local = len(pairs), local_pairs(pairs)
    prepared, clean, corrupted = _prepare(model, graph, local, task, ablation, batch_size, n_total)
    log_alpha = torch.full((graph.n_src, graph.n_dst), float(init), device=model.device, requires_grad=True)
    lambdas = torch.zeros(2, device=model.device, requires_grad=True)
    optimizer = torch.optim.Adam([{"params": [log_alpha], "lr": lr},
                                  {"params": [lambdas], "lr": lagrangian_lr, "maximize": True}])
    settings = {"sparsity": sparsity, "steps": steps, "lr": lr, "lagrangian_lr": lagrangian_lr, "warmup": warmup,
                "init": init, "ablation": ablation, "batch_size": batch_size, "seed": seed, "n_prompts": n_total,
                "metric": None if task is None else getattr(task, "__name__", "metric"), "graph": graph.cfg}
    loop = TrainingLoop(steps, optimizer=optimizer,
                        checkpoint=Path(out) / "checkpoint.safetensors" if out is not None else None,
                        checkpoint_every=checkpoint_every, resume=resume, progress=progress, settings=settings,
                        desc="edge pruning")
    restored = loop.restore()
    if restored is not None:
        with torch.no_grad():
            log_alpha.copy_(restored["log_alpha"])
            lambdas.copy_(restored["lambdas"])

    def step(index: int) -> dict[str, str]:
        chunk, ablated, objective, at = prepared[index % len(prepared)]
        z = sample_gates(log_alpha, step_generator(seed, index)) * real
        W = pruned_weights(graph, z[None])
        with torch.enable_grad(), model.frozen():
            logits = patched_logits(model, graph, chunk.clean, ablated, W, buffer_dtype=buffer_dtype, logits_at=at)
            loss = objective(logits).mean()
            density = open_probability(log_alpha)[real].mean()
            target = 1.0 - sparsity * min(1.0, (index + 1) / max(warmup, 1))
            gap = (density - target) * n_edges / 1000  # thousands of expected open edges above the target
            total = loss + lambdas[0] * gap + lambdas[1] * gap * gap
            optimizer.zero_grad(set_to_none=True)
            total.backward()
        average_gradients([log_alpha])  # data parallel: the mean of the ranks' gradients
        optimizer.step()
        kept = int((log_alpha.detach()[real] > 0).sum())
        return {"loss": f"{float(loss.detach()):.4f}", "density": f"{float(density.detach()):.3f}", "edges": kept}

    loop.run(step, lambda: ({"log_alpha": log_alpha.detach(), "lambdas": lambdas.detach()}, {}),
             on_checkpoint=on_checkpoint)
    scores = (log_alpha.detach() * real).float().cpu()
    name = "kl" if task is None else getattr(task, "__name__", "metric")
    return CircuitScores(graph.cfg, "edge", scores, "edge-pruning", name, ablation, 1, n_total, clean, corrupted,
                         score_kind="keep")


def _prepare(model, graph: Graph, pairs: PromptPairs, task, ablation: str, batch_size: int | None, n_total: int):
    """``(chunks, clean mean, corrupted mean)``: per chunk of this rank's prompts ``pairs``
    ``(pairs, ablated sources, objective: logits -> [n], positions to unembed or None)``, computed once before training, and
    the mean metric of the clean and the corrupted runs over every rank's prompts (for the KL:
    0 and the corrupted run's KL)."""
    mean = mean_sources(model, graph, pairs, batch_size, n_total) if ablation == "mean" else None
    with torch.no_grad():
        runs = [(chunk, mean if mean is not None else ablated_sources(model, graph, chunk.corrupted, ablation),
                 model(chunk.clean), model(chunk.corrupted)) for chunk in chunks(pairs, batch_size)]
    clean_m, corrupted_m = [], []
    out = []
    for chunk, ablated, clean_logits, corrupted_logits in runs:
        if task is None:
            kl = kl_to(clean_logits, chunk)
            at, view = answer_logits_view(kl, chunk)  # the KL reads the answer position alone
            out.append((chunk, ablated, _bind(kl, view), at))
            clean_m.append(torch.zeros(len(chunk)))
            corrupted_m.append(kl(corrupted_logits, chunk).float().cpu())
        else:
            clean_m.append(task(clean_logits, chunk).float().detach().cpu())
            corrupted_m.append(task(corrupted_logits, chunk).float().detach().cpu())
    clean, corrupted = torch.cat(clean_m), torch.cat(corrupted_m)
    every_clean, every_corrupted = (gathered(x.to(model.device)).cpu() for x in (clean, corrupted))
    if task is not None:
        scale = float((every_clean.mean() - every_corrupted.mean()).abs())
        if not scale > 0:
            raise SelectionError("the metric is the same on the clean and the corrupted prompts: nothing to keep")
        offset = 0
        for chunk, ablated, _, _ in runs:
            full = clean[offset : offset + len(chunk)]
            offset += len(chunk)
            at, view = answer_logits_view(task, chunk)
            out.append((chunk, ablated, _deviation(task, view, full, scale), at))
    return out, float(every_clean.mean()), float(every_corrupted.mean())


def _bind(metric, chunk: PromptPairs) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda logits: metric(logits, chunk).float()


def _deviation(task, chunk: PromptPairs, full: torch.Tensor, scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda logits: ((task(logits, chunk).float() - full.to(logits.device)) / scale).pow(2)
