"""Training SAEs and transcoders: TopK (with AuxK), BatchTopK (with its inference threshold),
ReLU with the decoder-norm-weighted L1 penalty (Anthropic, April 2024) and JumpReLU with an
L0 penalty and straight-through threshold gradients (Rajamanoharan et al. 2024).

Adam keeps fp32 weights and state whatever the activations' dtype (``autocast=True`` runs the
matmuls in bf16, ~1.5-1.9x faster on CPUs with bf16 units); the learning rate warms up linearly
and decays linearly to zero over the last ``decay_fraction`` of the steps; the sparsity
coefficient (L1 or L0) warms up; ``b_dec`` starts at the geometric median (or mean) of the
first batch; TopK, BatchTopK and JumpReLU decoders keep unit-norm rows (their gradient's
row-parallel part removed). TopK decodes sparsely (only the k active decoder rows). Latents
that have not fired for ``dead_window_tokens`` tokens count as dead (and feed the AuxK loss).

``normalize=True`` trains on activations scaled to mean norm sqrt(d) (the factor measured on
the first batch) and folds the factor into the weights at the end, so the returned SAE reads
and writes the model's own activations (its decoder rows then have norm ``1 / scale``).

Data parallel: under ``torchrun`` (``torch.distributed`` initialised) each rank trains on its
own batches, gradients are averaged across ranks before every step, fired latents and
BatchTopK thresholds are combined, and ``b_dec`` starts from all ranks' first batches; rank 0
writes the checkpoints.

Checkpoints (atomic, with the optimizer's state and the counters) are written every
``checkpoint_every`` steps; ``resume=True`` continues from the last one and, because the
batches are re-drawn from the same deterministic source and the skipped ones discarded,
ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import distributed as dist
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import SelectionError
from .modules import SAE

BatchSource = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]  # () -> (x, target) batches


@dataclass
class TrainConfig:
    steps: int
    lr: float = 2e-4
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    l1_coefficient: float = 5.0  # relu
    l0_coefficient: float = 1e-3  # jumprelu: weight of the expected number of active latents
    sparsity_warmup_steps: int = 100  # the L1 / L0 coefficient rises linearly over these steps
    jumprelu_bandwidth: float = 1e-3  # the straight-through estimator's kernel width
    jumprelu_init_threshold: float = 1e-3
    aux_k: int = 256  # topk / batchtopk
    aux_coefficient: float = 1 / 32
    threshold_momentum: float = 0.99  # batchtopk
    dead_window_tokens: int = 10_000_000
    b_dec_init: str = "geometric_median"  # or "mean", "zeros"
    normalize: bool = False  # train at mean norm sqrt(d), fold the scale into the weights at the end
    autocast: bool = False  # bf16 matmuls in the forward and backward passes (weights and Adam state stay fp32)
    checkpoint_every: int = 500
    seed: int = 0


def init_sae(sae: SAE, seed: int = 0) -> SAE:
    """Fresh weights: random unit-norm decoder rows (norm 0.1 for ReLU-L1, Anthropic's init),
    the encoder their transpose, zero biases (and ``threshold``). Returns ``sae``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rows = torch.randn(sae.cfg.d_sae, sae.cfg.d_output, generator=generator)
        rows = rows / rows.norm(dim=-1, keepdim=True) * (0.1 if sae.cfg.architecture == "relu" else 1.0)
        sae.W_dec.copy_(rows)
        sae.W_enc.copy_(rows.T if sae.cfg.d_in == sae.cfg.d_output else
                        torch.randn(sae.cfg.d_in, sae.cfg.d_sae, generator=generator) / sae.cfg.d_in ** 0.5)
        for tensor in (sae.b_enc, sae.b_dec, sae.threshold):
            tensor.zero_()
    return sae


def train_sae(sae: SAE, batches: BatchSource, config: TrainConfig, *, out: str | os.PathLike | None = None,
              resume: bool = False, progress: bool = True,
              on_checkpoint: Callable[[int], None] | None = None) -> SAE:
    """Train ``sae`` in place on ``batches()`` (a deterministic source of ``(x [b, d_in], target
    [b, d_output])``; target is x for an SAE) for ``config.steps`` steps; returns it (in eval
    mode). A module whose decoder is all zeros (fresh from ``SAE(cfg)``) gets `init_sae` first."""
    arch = sae.cfg.architecture
    checkpoint = Path(out) / "checkpoint.safetensors" if out is not None else None
    if resume and checkpoint is None:
        raise SelectionError("resume=True needs the run's out folder")
    torch.manual_seed(config.seed)
    if not bool(sae.W_dec.detach().any()):
        init_sae(sae, config.seed)
    sae.train()
    params = [p for p in sae.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999))
    state = {"step": 0, "tokens": 0, "scale_in": 1.0, "scale_out": 1.0}
    device = sae.W_dec.device
    last_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device)
    if resume and checkpoint.is_file():
        tensors, meta = load_checkpoint(checkpoint, optimizer)
        with torch.no_grad():
            for name, param in sae.named_parameters():
                param.copy_(tensors[name])
        last_fired = tensors["last_fired"].to(device)
        state = meta["state"]
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    writes = world == 1 or dist.get_rank() == 0
    if world > 1 and resume:
        _check_same_step(state["step"])
    source = batches()
    for _ in range(state["step"]):  # the batches the checkpointed run already used
        _next_batch(source, state["step"], config.steps)
    bar = tqdm(total=config.steps, initial=state["step"], disable=not (progress and writes), desc=f"{arch} SAE")
    for step in range(state["step"], config.steps):
        x, target = _next_batch(source, step, config.steps)
        x, target = x.to(device, torch.float32), target.to(device, torch.float32)
        if step == 0:
            _start(sae, x, target, config, state, world)
        x, target = x * state["scale_in"], target * state["scale_out"]
        for group in optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config)
        dead = state["tokens"] - last_fired >= config.dead_window_tokens
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.autocast):
            recon, fired, sparsity, l0 = _step_forward(sae, x, target, dead, step, config)
        error = target - recon.float()
        loss = error.pow(2).sum(-1).mean() + sparsity
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            _average_gradients(params, world)
            dist.all_reduce(fired, op=dist.ReduceOp.MAX)
        if arch != "relu":
            _remove_parallel_grad(sae.W_dec)
        optimizer.step()
        with torch.no_grad():
            if arch != "relu":
                sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))
            if arch == "jumprelu":
                sae.threshold.clamp_(min=1e-6)
        state["tokens"] += x.shape[0] * world
        last_fired[fired.bool()] = state["tokens"]
        state["step"] = step + 1
        if progress and writes:
            fve = 1 - error.pow(2).sum() / (target - target.mean(0)).pow(2).sum()
            bar.set_postfix(L0=f"{l0:.1f}", FVE=f"{fve:.3f}", dead=f"{dead.float().mean():.2f}")
        bar.update(1)
        if writes and checkpoint is not None and (state["step"] % config.checkpoint_every == 0
                                                 or state["step"] == config.steps):
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tensors = {name: p.detach() for name, p in sae.named_parameters()}
            save_checkpoint(checkpoint, {**tensors, "last_fired": last_fired},
                            {"state": state, "config": asdict(config), "sae": sae.cfg.to_dict()}, optimizer)
            if on_checkpoint is not None:
                on_checkpoint(state["step"])
    bar.close()
    fold_scale(sae, state["scale_in"], state["scale_out"])
    return sae.eval()


def local_rows(batch: torch.Tensor) -> torch.Tensor:
    """This rank's share of a global batch `[b, ...]` under ``torch.distributed`` (rows
    ``rank * b / world`` to ``(rank + 1) * b / world``); the whole batch in a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return batch
    world, rank = dist.get_world_size(), dist.get_rank()
    if batch.shape[0] % world:
        raise SelectionError(f"the batch size {batch.shape[0]} must divide evenly over {world} ranks")
    share = batch.shape[0] // world
    return batch[rank * share : (rank + 1) * share]


def _start(sae: SAE, x: torch.Tensor, target: torch.Tensor, config: TrainConfig, state: dict, world: int) -> None:
    """Step 0: the normalisation factors and ``b_dec``, from every rank's first batch."""
    if world > 1:
        x, target = _gather(x, world), _gather(target, world)
    if config.normalize:
        state["scale_in"] = _mean_norm_scale(x)
        state["scale_out"] = state["scale_in"] if target is x or torch.equal(target, x) else _mean_norm_scale(target)
    _init_b_dec(sae, target * state["scale_out"], config.b_dec_init)
    if sae.cfg.architecture == "jumprelu" and not bool(sae.threshold.detach().any()):
        with torch.no_grad():
            sae.threshold.fill_(config.jumprelu_init_threshold)


def _mean_norm_scale(acts: torch.Tensor) -> float:
    return float(acts.shape[-1] ** 0.5 / acts.norm(dim=-1).mean())


def fold_scale(sae: SAE, scale_in: float, scale_out: float) -> SAE:
    """Make an SAE trained on ``x * scale_in`` (reconstructing ``target * scale_out``) read and
    write unscaled activations with the same latents: ``W_enc * scale_in``, ``b_dec``, ``W_dec``
    ``/ scale_out`` (``W_skip * scale_in / scale_out``; an SAE's ``b_dec`` is its input offset
    too, which stays consistent because scale_in == scale_out)."""
    if scale_in == 1.0 and scale_out == 1.0:
        return sae
    with torch.no_grad():
        sae.W_enc.mul_(scale_in)
        sae.W_dec.div_(scale_out)
        sae.b_dec.div_(scale_out)
        if sae.W_skip is not None:
            sae.W_skip.mul_(scale_in / scale_out)
    return sae


def _step_forward(sae: SAE, x, target, dead, step: int, config: TrainConfig):
    """Reconstruction `[b, d_output]`, fired latents `[d_sae]` (0/1), the sparsity/auxiliary
    loss and the mean L0 for one training batch."""
    arch = sae.cfg.architecture
    warm = min(1.0, (step + 1) / max(1, config.sparsity_warmup_steps))
    pre = sae.pre_activation(x)
    if arch == "topk":
        top = torch.relu(pre).topk(sae.cfg.k, dim=-1)
        recon = sae.decode_sparse(top.indices, top.values, x)
        fired = torch.zeros(sae.cfg.d_sae, device=pre.device).index_fill_(0, top.indices[top.values > 0], 1.0)
        l0 = float((top.values > 0).sum(-1).float().mean())
        return recon, fired, _aux_loss(sae, pre, target - recon, dead, config), l0
    if arch == "batchtopk":
        latents = sae.encode(x)
        with torch.no_grad():
            _update_threshold(sae, latents, config.threshold_momentum, step)
    elif arch == "jumprelu":
        latents = _JumpReLU.apply(pre, sae.threshold, config.jumprelu_bandwidth)
    else:
        latents = torch.relu(pre)
    recon = sae.decode(latents, x)
    fired = (latents.detach() != 0).any(0).float()
    l0 = float((latents.detach() != 0).sum(-1).float().mean())
    if arch == "batchtopk":
        sparsity = _aux_loss(sae, pre, target - recon, dead, config)
    elif arch == "jumprelu":
        sparsity = config.l0_coefficient * warm * _Step.apply(pre, sae.threshold, config.jumprelu_bandwidth).sum(-1).mean()
    else:
        sparsity = config.l1_coefficient * warm * (latents * sae.W_dec.norm(dim=-1)).sum(-1).mean()
    return recon, fired, sparsity, l0


def _aux_loss(sae: SAE, pre, error, dead, config: TrainConfig) -> torch.Tensor:
    """AuxK (Gao et al.): the top aux_k dead latents reconstruct what the live ones missed."""
    if not bool(dead.any()):
        return pre.new_zeros(())
    dead_pre = torch.relu(pre).masked_fill(~dead, 0.0)
    top = dead_pre.topk(min(config.aux_k, int(dead.sum())), dim=-1)
    aux = torch.nn.functional.embedding_bag(top.indices, sae.W_dec, per_sample_weights=top.values, mode="sum")
    residual = error.detach()
    return config.aux_coefficient * (residual - aux).pow(2).sum(-1).mean() / residual.pow(2).sum(-1).mean()


def _rectangle(z: torch.Tensor) -> torch.Tensor:
    return ((z > -0.5) & (z < 0.5)).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    """``pre * (pre > threshold)``; the threshold's gradient is the straight-through estimate
    ``-(threshold / bandwidth) * rect((pre - threshold) / bandwidth)`` (Rajamanoharan et al. 2024)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        grad_pre = grad * (pre > threshold)
        grad_threshold = -(threshold / ctx.bandwidth) * _rectangle((pre - threshold) / ctx.bandwidth) * grad
        return grad_pre, grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    """``(pre > threshold)`` as a float; the threshold's gradient is
    ``-(1 / bandwidth) * rect((pre - threshold) / bandwidth)``, pre gets none."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(1.0 / ctx.bandwidth) * _rectangle((pre - threshold) / ctx.bandwidth) * grad
        return None, grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


def _next_batch(source: Iterator, step: int, steps: int):
    try:
        return next(source)
    except StopIteration:
        raise SelectionError(f"the batch source ran out after {step} of {steps} steps: give it more data "
                             "(or more epochs) or train fewer steps") from None


def _check_same_step(step: int) -> None:
    """Under data parallel every rank must resume from the same checkpoint (a shared folder)."""
    steps = torch.tensor([step, -step], dtype=torch.long)
    dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    if int(steps[0]) != step or int(-steps[1]) != step:
        raise SelectionError(f"ranks resumed from different steps ({int(-steps[1])} to {int(steps[0])}): "
                             "data-parallel resume needs the out folder on a filesystem every rank reads")


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for param, grad in zip(params, grads):
        param.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
        offset += grad.numel()


def _gather(x: torch.Tensor, world: int) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _lr_factor(step: int, config: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
    decay_start = int(config.steps * (1 - config.decay_fraction))
    decay = 1.0 if step < decay_start else max(0.0, (config.steps - step) / max(1, config.steps - decay_start))
    return warm * decay


def _remove_parallel_grad(w_dec: torch.nn.Parameter) -> None:
    if w_dec.grad is None:
        return
    unit = w_dec.detach() / w_dec.detach().norm(dim=-1, keepdim=True).clamp_min(1e-8)
    w_dec.grad -= (w_dec.grad * unit).sum(-1, keepdim=True) * unit


def _update_threshold(sae: SAE, latents: torch.Tensor, momentum: float, step: int) -> None:
    """BatchTopK's inference threshold: running mean of the smallest kept activation per batch
    (averaged over ranks under data parallel; a rank that kept nothing counts as missing)."""
    kept = latents[latents > 0]
    found = torch.stack([kept.min() if kept.numel() else latents.new_zeros(()), latents.new_tensor(float(kept.numel() > 0))])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(found)
    if float(found[1]) == 0:
        return
    value = found[0] / found[1]
    current = value if step == 0 else momentum * sae.threshold[0] + (1 - momentum) * value
    sae.threshold.fill_(float(current))


def _init_b_dec(sae: SAE, target: torch.Tensor, how: str) -> None:
    with torch.no_grad():
        if how == "zeros":
            return
        if how == "mean":
            sae.b_dec.copy_(target.mean(0))
        elif how == "geometric_median":
            sae.b_dec.copy_(_geometric_median(target))
        else:
            raise SelectionError(f"b_dec_init must be 'geometric_median', 'mean' or 'zeros', got {how!r}")


def _geometric_median(points: torch.Tensor, iterations: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to ``points`` `[n, d]`."""
    median = points.mean(0)
    for _ in range(iterations):
        distances = (points - median).norm(dim=-1).clamp_min(1e-8)
        new = (points / distances[:, None]).sum(0) / (1 / distances).sum()
        if (new - median).norm() < tol * median.norm().clamp_min(1e-8):
            return new
        median = new
    return median
