"""Evaluating a transcoder set: per layer, how well each transcoder reconstructs its MLP's
output (FVE, L0, dead latents; one forward per batch serves every layer), and the
replacement model's predictions with every MLP replaced at once, without error terms (what
the transcoders alone explain) and with them (exact but for float rounding: a check).

Tokens counted: position 0, special tokens and attention-sink outliers are left out of the
per-layer metrics and are not replaced (`data.harvest`); CE and KL are over every next-token
prediction: ``ce`` the mean cross-entropy, ``kl`` the mean KL(clean || replaced) per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..data.harvest import massive_tokens, token_mask
from ..models.functional import kl_divergence, next_token_losses
from ..models.hooked import HookedModel
from ..result import Result
from ..sae.splice import splice_hooks
from ..viz import figures
from .transcoders import TranscoderSet


@dataclass
class TranscoderSetEvaluation(Result):
    """Per layer: ``fve``, ``l0``, ``dead_fraction`` `[n_layers]`; the replacement model:
    ``ce_clean``, ``ce_replaced`` / ``kl_replaced`` (every MLP replaced by its transcoder, no
    error terms), ``ce_with_errors`` / ``kl_with_errors`` (plus the error terms)."""

    n_tokens: int
    layers: list[int]
    fve: torch.Tensor
    l0: torch.Tensor
    dead_fraction: torch.Tensor
    ce_clean: float
    ce_replaced: float
    kl_replaced: float
    ce_with_errors: float
    kl_with_errors: float

    _value = "fve"
    _signed = False

    def to_dataframe(self) -> pd.DataFrame:
        """One row per layer: layer, fve, l0, dead_fraction."""
        return pd.DataFrame({"layer": self.layers, "fve": self.fve.double().numpy(), "l0": self.l0.double().numpy(),
                             "dead_fraction": self.dead_fraction.double().numpy()})

    def plot(self, value: str | None = None, **selection):
        column = self.plot_column(value)
        data = self.plot_data(value, **selection)
        return figures.bar([f"L{l}" for l in data["layer"]], data[column].to_numpy(),
                           title=f"transcoders: {column} per layer; {self.summary()}", x_label="layer", y_label=column)

    def summary(self) -> str:
        return (f"mean FVE {float(self.fve.mean()):.3f}, L0 {float(self.l0.mean()):.1f}; every MLP replaced: CE "
                f"{self.ce_clean:.3f} -> {self.ce_replaced:.3f} (KL {self.kl_replaced:.3f}); with error nodes KL "
                f"{self.kl_with_errors:.1e}")


def evaluate_transcoders(model: HookedModel, transcoders: TranscoderSet, tokens: torch.Tensor, *, batch_size: int = 8,
                         outlier_ratio: float | None = 10.0) -> TranscoderSetEvaluation:
    """Evaluate ``transcoders`` on token ids ``tokens`` `[n, pos]` (see the module docstring)."""
    transcoders.check(model, every_layer=False)
    names = list(dict.fromkeys(n for tc in transcoders for n in (tc.cfg.hook_name, tc.cfg.output_hook_name)))
    n_layers = len(transcoders)
    sq_err, sq_sum, active, counts = (torch.zeros(n_layers, dtype=torch.float64) for _ in range(4))
    y_sum = [torch.zeros(tc.cfg.d_output, dtype=torch.float64) for tc in transcoders]
    fired = [torch.zeros(tc.cfg.d_sae, dtype=torch.bool) for tc in transcoders]
    sums = dict.fromkeys(("ce_clean", "ce_replaced", "kl_replaced", "ce_with_errors", "kl_with_errors"), 0.0)
    n_tokens = n_predictions = 0
    hooks = {kind: {k: v for tc in transcoders for k, v in splice_hooks(
        tc, keep_error=kind == "with_errors", skip_first=True, outlier_ratio=outlier_ratio).items()}
        for kind in ("replaced", "with_errors")}
    with torch.no_grad():
        for batch in tokens.split(batch_size):
            clean, cache = model.run_with_cache(batch, names)
            kept = token_mask(model, batch)
            for i, tc in enumerate(transcoders):
                x_all = cache[tc.cfg.hook_name]
                keep = kept.to(x_all.device) & ~massive_tokens(x_all, outlier_ratio)
                x, y = x_all[keep].to(tc.W_enc.dtype), cache[tc.cfg.output_hook_name][keep].double()
                latents = tc.encode(x)
                sq_err[i] += float(((tc.decode(latents, x).double() - y) ** 2).sum())
                sq_sum[i] += float((y**2).sum())
                y_sum[i] += y.sum(0).cpu()
                active[i] += float((latents != 0).sum())
                counts[i] += len(x)
                fired[i] |= (latents != 0).any(0).cpu()
            n_tokens += int(kept.sum())
            reference = clean[:, :-1].float().log_softmax(-1)
            sums["ce_clean"] += float(next_token_losses(clean, batch).sum())
            for kind, spliced in hooks.items():
                with model.hooks(spliced):
                    logits = model(batch)
                sums[f"ce_{kind}"] += float(next_token_losses(logits, batch).sum())
                sums[f"kl_{kind}"] += float(kl_divergence(reference, logits[:, :-1].float().log_softmax(-1)).sum())
            n_predictions += batch.shape[0] * (batch.shape[1] - 1)
    variance = sq_sum - torch.stack([(s**2).sum() for s in y_sum]) / counts  # sum ||y - mean||^2 per layer
    return TranscoderSetEvaluation(
        n_tokens=n_tokens, layers=transcoders.layers, fve=(1 - sq_err / variance).float(), l0=(active / counts).float(),
        dead_fraction=torch.tensor([1 - float(f.float().mean()) for f in fired]),
        **{k: v / n_predictions for k, v in sums.items()})
