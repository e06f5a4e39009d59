"""Sparse autoencoders and transcoders behind one interface.

An SAE reads an activation ``x`` `[..., d_in]` and reconstructs it; a transcoder reads one
activation and reconstructs another (e.g. ``ln2.out`` -> ``mlp.out``, ``d_out`` wide, with an
optional linear skip connection). Both encode ``pre = (x - b_dec) @ W_enc + b_enc`` (``b_dec``
subtracted only for SAEs with ``pre_encoder_bias``), apply the architecture's activation to
get latents `[..., d_sae]`, and decode ``latents @ W_dec + b_dec`` (+ ``x @ W_skip``).

The architecture ("relu", "topk", "batchtopk", "jumprelu", or any registered since) is a
name in the registry of `mechscope.sae.architectures`, which holds everything that differs
between them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import SelectionError
from .architectures import Architecture, get_architecture
from .splice import SAESplice


@dataclass
class SAEConfig:
    """What an SAE is: sizes, architecture, and where in which model it reads and writes."""

    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int | None = None
    d_out: int | None = None  # transcoders: width of the reconstructed activation
    skip_connection: bool = False  # transcoders: add x @ W_skip
    pre_encoder_bias: bool = True  # SAEs: encode x - b_dec
    hook_name: str = ""
    output_hook_name: str | None = None  # transcoders: the activation reconstructed
    model_name: str = ""

    def __post_init__(self) -> None:
        self.arch.validate(self)
        if self.d_in < 1 or self.d_sae < 1:
            raise SelectionError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if self.skip_connection and not self.is_transcoder:
            raise SelectionError("a skip connection belongs to a transcoder (set d_out)")
        if self.is_transcoder:
            self.pre_encoder_bias = False  # b_dec lives in the output space
        for field in ("hook_name", "output_hook_name"):
            name = getattr(self, field)
            if name is not None and (not isinstance(name, str) or any(c in name for c in "*?[")):
                raise SelectionError(f"{field} must be one exact activation name (an SAE reads and writes one "
                                     f"activation), not {name!r}")

    @property
    def arch(self) -> Architecture:
        """The registered `Architecture` named by ``architecture``."""
        return get_architecture(self.architecture)

    @property
    def is_transcoder(self) -> bool:
        return self.d_out is not None

    @property
    def d_output(self) -> int:
        return self.d_in if self.d_out is None else self.d_out

    def to_dict(self) -> dict:
        return asdict(self)


class SAE(nn.Module):
    """Parameters (fp32 unless converted): ``W_enc`` `[d_in, d_sae]`, ``b_enc`` `[d_sae]`,
    ``W_dec`` `[d_sae, d_output]`, ``b_dec`` `[d_output]`, ``threshold`` `[d_sae]` (used by
    thresholded architectures such as jumprelu and batchtopk, trained where the architecture
    says so; zeros otherwise), ``W_skip`` `[d_in, d_output]` (transcoders with a skip)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_output))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_output))
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae), requires_grad=cfg.arch.trains_threshold)
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_output)) if cfg.skip_connection else None

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - b_dec) @ W_enc + b_enc`` `[..., d_sae]` (no ``b_dec`` for transcoders). A
        floating ``x`` of another dtype (float64, bf16) is cast to the SAE's dtype first."""
        x = self._check(x, self.cfg.d_in, "input")
        if self.cfg.pre_encoder_bias:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents `[..., d_sae]` of ``x`` `[..., d_in]` (the architecture's activation of
        `pre_activation`; batchtopk's differs between training and eval mode)."""
        return self.cfg.arch.encode(self, self.pre_activation(x))

    def decode(self, latents: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction `[..., d_output]` of latents `[..., d_sae]`; a transcoder with a skip
        connection also needs its input ``x`` `[..., d_in]`. Cast to the SAE's dtype as in
        `pre_activation`."""
        latents = self._check(latents, self.cfg.d_sae, "latents")
        if x is not None:
            x = self._check(x, self.cfg.d_in, "input")
        out = latents @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise SelectionError("this transcoder has a skip connection: decode(latents, x) needs its input x")
            out = out + x @ self.W_skip
        return out

    def decode_sparse(self, indices: torch.Tensor, values: torch.Tensor,
                      x: torch.Tensor | None = None) -> torch.Tensor:
        """`decode` of latents given as their active entries: ``indices``/``values`` `[..., k]`
        (e.g. a top-k); reads only those k rows of ``W_dec`` (an ``embedding_bag``), so it
        costs k/d_sae of the dense decode. Returns `[..., d_output]`."""
        flat_indices = indices.reshape(-1, indices.shape[-1])
        out = nn.functional.embedding_bag(flat_indices, self.W_dec, per_sample_weights=values.reshape(flat_indices.shape).to(self.W_dec.dtype),
                                          mode="sum")
        out = out.reshape(*indices.shape[:-1], self.cfg.d_output) + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise SelectionError("this transcoder has a skip connection: decode_sparse(..., x) needs its input x")
            out = out + x @ self.W_skip
        return out

    def spliced(self, *, keep_error: bool = False, skip_first: bool = False,
                outlier_ratio: float | None = None) -> SAESplice:
        """This SAE as a model extension, for ``model.attach`` (see `SAESplice`)."""
        return SAESplice(self, keep_error=keep_error, skip_first=skip_first, outlier_ratio=outlier_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction `[..., d_output]` of ``x`` `[..., d_in]`."""
        return self.decode(self.encode(x), x)

    def _check(self, x: torch.Tensor, width: int, what: str) -> torch.Tensor:
        """``x`` `[..., width]` in the SAE's dtype, or a `SelectionError` naming what is wrong with it."""
        if not isinstance(x, torch.Tensor):
            raise SelectionError(f"SAE {what} must be a tensor [..., {width}], got {type(x).__name__}")
        if x.ndim == 0 or x.shape[-1] != width:
            raise SelectionError(f"SAE {what} must be [..., {width}], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise SelectionError(f"SAE {what} must be a floating-point tensor (activations), got {x.dtype}")
        if x.device != self.W_enc.device:
            raise SelectionError(f"SAE {what} is on {x.device} but the SAE is on {self.W_enc.device}: "
                                 f"move one of them (sae.to({str(x.device)!r}))")
        return x.to(self.W_enc.dtype)

