"""Training SAEs and transcoders of every registered architecture (`sae.architectures`: TopK
with AuxK, BatchTopK with its inference threshold, ReLU with the decoder-norm-weighted L1
penalty, JumpReLU with an L0 penalty and straight-through threshold gradients); this module
holds what they share, and each step asks the architecture for its forward and its loss.

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

Data parallel (`mechscope.distributed`): under ``torchrun`` (``torch.distributed``
initialised) each rank trains on its own batches, gradients are averaged across ranks before
every step, fired latents and BatchTopK thresholds are combined, and ``b_dec`` starts from all
ranks' first batches; rank 0 writes the checkpoints.

The loop is `mechscope.training.TrainingLoop`: checkpoints (atomic, with the optimizer's
state and the counters) every ``checkpoint_every`` steps; ``resume=True`` continues from the
last one and, because the batches are re-drawn from the same deterministic source and the
skipped ones discarded (`training.StepBatches`), ends with exactly the weights of an
uninterrupted run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..distributed import all_reduce_, average_gradients, gather_rows, world_size
from ..errors import SelectionError
from ..training import StepBatches, TrainingLoop
from .architectures import TrainBatch
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
    """Fresh weights: random decoder rows of the architecture's initial norm (1; 0.1 for
    ReLU-L1, Anthropic's init), the encoder their transpose (a scaled random matrix for a
    transcoder whose widths differ), zero biases (and ``threshold``). Returns ``sae``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rows = torch.randn(sae.cfg.d_sae, sae.cfg.d_output, generator=generator)
        rows = rows / rows.norm(dim=-1, keepdim=True) * sae.cfg.arch.init_decoder_norm
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
    mode). A module whose decoder is all zeros (fresh from ``SAE(cfg)``) gets `init_sae` first.
    ``out``: the folder of ``checkpoint.safetensors``; ``resume=True`` continues from it (a
    checkpoint of another config or SAE is refused); ``on_checkpoint(step)`` runs after each
    checkpoint is written."""
    if resume and out is None:
        raise SelectionError("resume=True needs the run's out folder")
    torch.manual_seed(config.seed)
    trainer = SAETrainer(sae, config)
    optimizer = torch.optim.Adam(trainer.params, lr=config.lr, betas=(0.9, 0.999))
    loop = TrainingLoop(config.steps, optimizer=optimizer,
                        checkpoint=Path(out) / "checkpoint.safetensors" if out is not None else None,
                        checkpoint_every=config.checkpoint_every, resume=resume, progress=progress,
                        settings={"config": asdict(config), "sae": sae.cfg.to_dict()}, desc=f"{sae.cfg.arch.name} SAE")
    restored = loop.restore()
    if restored is not None:
        trainer.restore(restored, loop.meta["counters"])
    source = StepBatches(batches, start=loop.start, steps=config.steps)

    def step(index: int) -> dict[str, str] | None:
        x, target = source(index)
        set_lr(optimizer, config, index)
        loss, shown = trainer.loss(index, x, target, show=loop.show_progress)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.after_backward()
        optimizer.step()
        trainer.after_step()
        return shown

    def state() -> tuple[dict[str, torch.Tensor], dict]:
        return trainer.state(), {"counters": trainer.counters}

    loop.run(step, state, on_checkpoint=on_checkpoint)
    return trainer.finish()


def set_lr(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int) -> None:
    """Every parameter group's learning rate at ``step``: warm-up, then the linear decay."""
    for group in optimizer.param_groups:
        group["lr"] = config.lr * _lr_factor(step, config)


class SAETrainer:
    """One SAE's share of a training step (`train_sae` drives one; a transcoder set's trainer
    drives one per layer under one optimizer): the loss of a batch, what follows its backward
    (gradient averaging over ranks, the decoder's unit-norm constraint, dead-latent counters),
    the tensors and counters a checkpoint holds, and the final scale folding."""

    def __init__(self, sae: SAE, config: TrainConfig):
        self.sae, self.config = sae, config
        if not bool(sae.W_dec.detach().any()):
            init_sae(sae, config.seed)
        sae.train()
        self.params = [p for p in sae.parameters() if p.requires_grad]
        self.device = sae.W_dec.device
        self.counters = {"tokens": 0, "scale_in": 1.0, "scale_out": 1.0}
        self.last_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=self.device)
        self._fired: torch.Tensor | None = None
        self._rows = 0

    def restore(self, tensors: dict[str, torch.Tensor], counters: dict, prefix: str = "") -> None:
        """Take the weights and counters a checkpoint holds (``state(prefix)`` wrote them)."""
        with torch.no_grad():
            for name, param in self.sae.named_parameters():
                param.copy_(tensors[prefix + name])
        self.last_fired.copy_(tensors[prefix + "last_fired"])
        self.counters = dict(counters)

    def state(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors to checkpoint (names prefixed by ``prefix``); the counters are `counters`."""
        tensors = {prefix + name: p.detach() for name, p in self.sae.named_parameters()}
        return {**tensors, prefix + "last_fired": self.last_fired}

    def loss(self, index: int, x: torch.Tensor, target: torch.Tensor, *, show: bool = False
             ) -> tuple[torch.Tensor, dict[str, str] | None]:
        """``(loss, progress fields or None)`` of step ``index`` on ``x`` `[b, d_in]`,
        ``target`` `[b, d_output]` (step 0 also sets the scales and ``b_dec``)."""
        config, sae, counters = self.config, self.sae, self.counters
        x, target = x.to(self.device, torch.float32), target.to(self.device, torch.float32)
        if index == 0:
            _start(sae, x, target, config, counters)
        x, target = x * counters["scale_in"], target * counters["scale_out"]
        dead = counters["tokens"] - self.last_fired >= config.dead_window_tokens
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.autocast):
            result = sae.cfg.arch.train_step(sae, TrainBatch(x, target, sae.pre_activation(x), dead, index), config)
        error = target - result.recon.float()
        self._fired, self._rows = result.fired, x.shape[0]
        loss = error.pow(2).sum(-1).mean() + result.loss
        if not show:
            return loss, None
        with torch.no_grad():
            fve = 1 - error.pow(2).sum() / (target - target.mean(0)).pow(2).sum()
        return loss, {"L0": f"{result.l0:.1f}", "FVE": f"{fve:.3f}", "dead": f"{dead.float().mean():.2f}"}

    def after_backward(self) -> None:
        """Average the gradients over ranks; combine the fired latents; keep the decoder's
        gradient orthogonal to its unit-norm rows (architectures that constrain them)."""
        average_gradients(self.params)
        self._fired = all_reduce_(self._fired, "max")
        if self.sae.cfg.arch.unit_norm_decoder:
            _remove_parallel_grad(self.sae.W_dec)

    def after_step(self) -> None:
        """After the optimizer's step: renormalise decoder rows, the architecture's own update,
        the token and dead-latent counters."""
        sae = self.sae
        with torch.no_grad():
            if sae.cfg.arch.unit_norm_decoder:
                sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))
            sae.cfg.arch.after_step(sae)
        self.counters["tokens"] += self._rows * world_size()
        self.last_fired[self._fired.bool()] = self.counters["tokens"]

    def finish(self) -> SAE:
        """The trained SAE reading and writing unscaled activations, in eval mode."""
        fold_scale(self.sae, self.counters["scale_in"], self.counters["scale_out"])
        return self.sae.eval()


def _start(sae: SAE, x: torch.Tensor, target: torch.Tensor, config: TrainConfig, counters: dict) -> None:
    """Step 0: the normalisation factors and ``b_dec``, from every rank's first batch, then the
    architecture's own start (e.g. JumpReLU's first threshold)."""
    x, target = gather_rows(x), gather_rows(target)
    if config.normalize:
        counters["scale_in"] = _mean_norm_scale(x)
        counters["scale_out"] = (counters["scale_in"] if target is x or torch.equal(target, x)
                                 else _mean_norm_scale(target))
    _init_b_dec(sae, target * counters["scale_out"], config.b_dec_init)
    sae.cfg.arch.start(sae, config)


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
