"""SAE architectures, one entry each: everything that differs between them (the activation,
its training-time form, the sparsity penalty or auxiliary loss, the threshold, the decoder's
norm and its init) lives on one `Architecture` object, and the modules and the trainer only
ask it. Adding one (Matryoshka, gated...) is a subclass and a `register_architecture` call.

- "relu": ``relu(pre)``, trained with an L1 penalty weighted by decoder row norms
  (Anthropic, April 2024); decoder rows start at norm 0.1 and are free.
- "topk": the ``k`` largest of ``relu(pre)`` per token, the rest zero (Gao et al. 2024),
  decoded sparsely in training, with the AuxK loss over dead latents.
- "batchtopk": in training, the ``k * n_tokens`` largest of ``relu(pre)`` over the whole batch
  (with AuxK); in eval mode ``relu(pre)`` where ``pre > threshold``, the threshold a running
  mean of the smallest activation kept in training.
- "jumprelu": ``relu(pre)`` where ``pre > threshold`` (per latent, trained), as in Gemma
  Scope, with an L0 penalty and straight-through threshold gradients (Rajamanoharan et al. 2024).
Every architecture but "relu" keeps unit-norm decoder rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from ..distributed import all_reduce_
from ..errors import SelectionError, UnknownSAEArchitectureError

if TYPE_CHECKING:
    from .modules import SAE, SAEConfig
    from .train import TrainConfig


class TrainBatch(NamedTuple):
    """What a training step knows about its batch: ``x`` `[b, d_in]`, ``target`` `[b, d_output]`
    (x for an SAE), ``pre = sae.pre_activation(x)`` `[b, d_sae]`, ``dead`` `[d_sae]` (latents that
    have not fired for ``dead_window_tokens``) and the step index."""

    x: torch.Tensor
    target: torch.Tensor
    pre: torch.Tensor
    dead: torch.Tensor
    step: int


class StepOutput(NamedTuple):
    """One training forward: ``recon`` `[b, d_output]`, ``fired`` `[d_sae]` (1.0 where a latent
    fired in the batch), ``loss`` (the sparsity penalty or auxiliary loss, added to the summed
    squared error) and ``l0`` (mean active latents per token)."""

    recon: torch.Tensor
    fired: torch.Tensor
    loss: torch.Tensor
    l0: float


class Architecture:
    """How one SAE architecture encodes and trains. Subclasses set ``name`` and override what
    differs; the defaults describe a dense ReLU-family SAE whose training latents are its
    `encode`.

    Declarative facts: ``uses_k`` (needs ``SAEConfig.k``), ``trains_threshold`` (the per-latent
    ``threshold`` is a trained parameter), ``unit_norm_decoder`` (decoder rows renormalised after
    every step, their gradient's row-parallel part removed before it), ``init_decoder_norm``
    (norm of the random decoder rows `init_sae` draws).
    """

    name: str = ""
    uses_k: bool = False
    trains_threshold: bool = False
    unit_norm_decoder: bool = True
    init_decoder_norm: float = 1.0

    def validate(self, cfg: SAEConfig) -> None:
        """Raise `SelectionError` if ``cfg`` cannot describe an SAE of this architecture."""
        if self.uses_k and not (cfg.k and 0 < cfg.k <= cfg.d_sae):
            raise SelectionError(f"{self.name} needs 0 < k <= d_sae = {cfg.d_sae}, got k = {cfg.k}")

    def encode(self, sae: SAE, pre: torch.Tensor) -> torch.Tensor:
        """Latents `[..., d_sae]` from pre-activations ``pre`` `[..., d_sae]` (``sae.training``
        tells training from inference)."""
        raise NotImplementedError

    def train_latents(self, sae: SAE, batch: TrainBatch, config: TrainConfig) -> torch.Tensor:
        """The latents `[b, d_sae]` a training step decodes (gradients flow through them)."""
        return self.encode(sae, batch.pre)

    def penalty(self, sae: SAE, batch: TrainBatch, latents: torch.Tensor, recon: torch.Tensor,
                config: TrainConfig) -> torch.Tensor:
        """The loss added to the reconstruction error, given the step's ``latents`` `[b, d_sae]`
        and reconstruction ``recon`` `[b, d_output]`; none by default."""
        return batch.pre.new_zeros(())

    def train_step(self, sae: SAE, batch: TrainBatch, config: TrainConfig) -> StepOutput:
        """The training forward on one batch: `train_latents`, a dense decode, `penalty`."""
        latents = self.train_latents(sae, batch, config)
        recon = sae.decode(latents, batch.x)
        fired = (latents.detach() != 0).any(0).float()
        l0 = float((latents.detach() != 0).sum(-1).float().mean())
        return StepOutput(recon, fired, self.penalty(sae, batch, latents, recon, config), l0)

    def start(self, sae: SAE, config: TrainConfig) -> None:
        """Step 0 of training, after ``b_dec`` is initialised (e.g. a first threshold)."""

    def after_step(self, sae: SAE) -> None:
        """After every optimizer step (and the decoder renormalisation), under no_grad."""


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture, *, replace: bool = False) -> Architecture:
    """Make ``arch`` available as ``SAEConfig(architecture=arch.name)``; returns it. An existing
    name is refused unless ``replace``."""
    if not arch.name:
        raise SelectionError(f"{type(arch).__name__} has no name")
    if arch.name in ARCHITECTURES and not replace:
        raise SelectionError(f"an SAE architecture named {arch.name!r} is registered already (pass replace=True)")
    ARCHITECTURES[arch.name] = arch
    return arch


def get_architecture(name: str) -> Architecture:
    """The registered architecture ``name``; `UnknownSAEArchitectureError` (with the closest
    names) otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownSAEArchitectureError(name, ARCHITECTURES) from None


def sparsity_warmup(step: int, config: TrainConfig) -> float:
    """The sparsity coefficient's warmup factor at ``step``: rises linearly to 1 over
    ``config.sparsity_warmup_steps``."""
    return min(1.0, (step + 1) / max(1, config.sparsity_warmup_steps))


def aux_k_loss(sae: SAE, batch: TrainBatch, recon: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """AuxK (Gao et al.): the top ``aux_k`` dead latents reconstruct what the live ones missed
    (``target - recon`` `[b, d_output]`), normalised by that error's size."""
    pre, dead = batch.pre, batch.dead
    if not bool(dead.any()):
        return pre.new_zeros(())
    dead_pre = torch.relu(pre).masked_fill(~dead, 0.0)
    top = dead_pre.topk(min(config.aux_k, int(dead.sum())), dim=-1)
    aux = torch.nn.functional.embedding_bag(top.indices, sae.W_dec, per_sample_weights=top.values, mode="sum")
    residual = (batch.target - recon).detach()
    return config.aux_coefficient * (residual - aux).pow(2).sum(-1).mean() / residual.pow(2).sum(-1).mean()


class ReLU(Architecture):
    name = "relu"
    unit_norm_decoder = False
    init_decoder_norm = 0.1

    def encode(self, sae: SAE, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def penalty(self, sae, batch, latents, recon, config):
        """L1 of the latents weighted by decoder row norms, its coefficient warmed up."""
        weighted = latents * sae.W_dec.norm(dim=-1)
        return config.l1_coefficient * sparsity_warmup(batch.step, config) * weighted.sum(-1).mean()


class TopK(Architecture):
    name = "topk"
    uses_k = True

    def encode(self, sae: SAE, pre: torch.Tensor) -> torch.Tensor:
        acts = torch.relu(pre)
        top = acts.topk(sae.cfg.k, dim=-1)
        return torch.zeros_like(acts).scatter(-1, top.indices, top.values)

    def train_step(self, sae, batch, config):
        """Decodes only the k active rows of ``W_dec`` (`SAE.decode_sparse`); AuxK loss."""
        top = torch.relu(batch.pre).topk(sae.cfg.k, dim=-1)
        recon = sae.decode_sparse(top.indices, top.values, batch.x)
        fired = torch.zeros(sae.cfg.d_sae, device=recon.device).index_fill_(0, top.indices[top.values > 0], 1.0)
        l0 = float((top.values > 0).sum(-1).float().mean())
        return StepOutput(recon, fired, aux_k_loss(sae, batch, recon, config), l0)


class BatchTopK(Architecture):
    name = "batchtopk"
    uses_k = True

    def encode(self, sae: SAE, pre: torch.Tensor) -> torch.Tensor:
        acts = torch.relu(pre)
        if sae.training:
            flat = acts.reshape(-1)
            n_tokens = acts.numel() // sae.cfg.d_sae
            top = flat.topk(min(sae.cfg.k * n_tokens, flat.numel()))
            return torch.zeros_like(flat).scatter(0, top.indices, top.values).reshape(acts.shape)
        return acts * (pre > sae.threshold)

    def train_latents(self, sae, batch, config):
        """The batch top-k of a fresh encode; updates the inference threshold from it."""
        latents = sae.encode(batch.x)
        with torch.no_grad():
            _update_threshold(sae, latents, config.threshold_momentum, batch.step)
        return latents

    def penalty(self, sae, batch, latents, recon, config):
        return aux_k_loss(sae, batch, recon, config)


class JumpReLU(Architecture):
    name = "jumprelu"
    trains_threshold = True

    def encode(self, sae: SAE, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre) * (pre > sae.threshold)

    def train_latents(self, sae, batch, config):
        """``pre * (pre > threshold)`` with straight-through threshold gradients."""
        return _JumpReLU.apply(batch.pre, sae.threshold, config.jumprelu_bandwidth)

    def penalty(self, sae, batch, latents, recon, config):
        """The L0 (a step function with straight-through threshold gradients), warmed up."""
        active = _Step.apply(batch.pre, sae.threshold, config.jumprelu_bandwidth)
        return config.l0_coefficient * sparsity_warmup(batch.step, config) * active.sum(-1).mean()

    def start(self, sae, config):
        """A threshold that is all zeros starts at ``config.jumprelu_init_threshold``."""
        if not bool(sae.threshold.detach().any()):
            with torch.no_grad():
                sae.threshold.fill_(config.jumprelu_init_threshold)

    def after_step(self, sae):
        sae.threshold.clamp_(min=1e-6)


for _arch in (ReLU(), TopK(), BatchTopK(), JumpReLU()):
    register_architecture(_arch)


def _update_threshold(sae: SAE, latents: torch.Tensor, momentum: float, step: int) -> None:
    """BatchTopK's inference threshold: running mean of the smallest kept activation per batch
    (averaged over ranks under data parallel; a rank that kept nothing counts as missing)."""
    kept = latents[latents > 0]
    found = torch.stack([kept.min() if kept.numel() else latents.new_zeros(()),
                         latents.new_tensor(float(kept.numel() > 0))])
    all_reduce_(found)
    if float(found[1]) == 0:
        return
    value = found[0] / found[1]
    current = value if step == 0 else momentum * sae.threshold[0] + (1 - momentum) * value
    sae.threshold.fill_(float(current))


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
