"""Evaluating an SAE or transcoder on a model: reconstruction, sparsity, and what splicing it in
costs the model's predictions.

Formulas (over the evaluated tokens: position 0 excluded with ``skip_first``, and the
attention-sink outliers with ``outlier_ratio``, see `data.harvest.massive_tokens`):
- ``l0``: mean number of non-zero latents per token.
- ``fve`` (fraction of variance explained, mean-centred):
  ``1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2``, ``y`` the target activation (the input
  for an SAE, the output activation for a transcoder), ``mean(y)`` its mean over tokens.
- ``mse``: mean over tokens and dims of ``(y - y_hat)^2``; ``cosine``: mean cosine of ``y`` and ``y_hat``.
- ``ce_*``: next-token cross-entropy of the clean model, with the reconstruction spliced in,
  and with the activation zero-ablated; ``ce_recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean)``.
- ``kl_sae``, ``kl_zero``: mean KL(clean || spliced) and KL(clean || zero-ablated) per token.
- ``density`` `[d_sae]`: fraction of tokens each latent fires on; ``dead_fraction``: latents
  that never fire; ``dense_fraction``: latents firing on more than ``dense_threshold`` of tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from ..data.harvest import massive_tokens, token_mask
from ..models.functional import next_token_losses
from ..models.hooked import HookedModel
from ..result import Result
from ..viz import figures
from .modules import SAE
from .splice import check_sae_names, splice_hooks


@dataclass
class SAEEvaluation(Result):
    """Metrics of `evaluate_sae` (see the module docstring for the formulas).

    Protocol (`mechscope.result`): ``to_dict()`` has the scalar metrics; ``to_dataframe()`` a
    row per latent (its firing density); ``top(n)`` the densest latents; ``plot()`` the
    histogram of log10 density over the latents that fire, the metrics in its title.
    """

    n_tokens: int
    l0: float
    fve: float
    mse: float
    cosine: float
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_recovered: float
    kl_sae: float
    kl_zero: float
    dead_fraction: float
    dense_fraction: float
    density: torch.Tensor

    _value = "density"
    _signed = False
    _plot_value = "log10_density"

    def to_dict(self) -> dict:
        """Scalars only (``density`` left out)."""
        return {k: v for k, v in asdict(self).items() if k != "density"}

    def summary(self) -> str:
        return (f"SAE evaluation on {self.n_tokens:,} tokens: L0 {self.l0:.1f}, FVE {self.fve:.3f}, "
                f"CE recovered {self.ce_recovered:.3f}, KL {self.kl_sae:.3f}, dead {self.dead_fraction:.2%}, "
                f"dense {self.dense_fraction:.2%}")

    def to_dataframe(self) -> pd.DataFrame:
        """One row per latent: ``density`` (fraction of tokens it fires on), ``log10_density``
        (NaN for latents that never fire) and ``dead``."""
        density = self.density.detach().double().cpu().numpy()
        with np.errstate(divide="ignore"):
            log = np.where(density > 0, np.log10(np.where(density > 0, density, 1.0)), np.nan)
        return pd.DataFrame({"latent": np.arange(len(density)), "density": density, "log10_density": log,
                             "dead": density == 0})

    def plot(self, value: str | None = None, *, bins: int = 40, **selection):
        """Histogram of ``log10_density`` over the latents that fire (``value`` picks another column)."""
        frame = self.plot_data(value, **selection)
        column = self.plot_column(value)
        title = (f"Latent density over {self.n_tokens:,} tokens ({int(frame['dead'].sum())} dead of {len(frame)}); "
                 f"L0 {self.l0:.1f}, FVE {self.fve:.3f}, CE recovered {self.ce_recovered:.3f}")
        return figures.histogram(frame[column].to_numpy(float), title=title, x_label=column, bins=bins)

    def density_histogram(self, bins: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
        """``(counts [bins], edges [bins + 1])`` of log10 density over the latents that fire."""
        alive = self.density[self.density > 0].log10()
        low = float(alive.min()) if alive.numel() else -1.0
        edges = torch.linspace(min(low, -1.0), 0.0, bins + 1)
        return torch.histc(alive, bins=bins, min=float(edges[0]), max=0.0), edges


def evaluate_sae(model: HookedModel, sae: SAE, tokens: torch.Tensor, *, batch_size: int = 8,
                 skip_first: bool = True, outlier_ratio: float | None = 10.0,
                 dense_threshold: float = 0.1) -> SAEEvaluation:
    """Evaluate ``sae`` on token ids ``tokens`` `[n, pos]` (in batches of ``batch_size``).

    Left out of the metrics: the tokenizer's special tokens, position 0 (``skip_first``) and
    the tokens whose input norm is over ``outlier_ratio`` times the batch's median
    (`data.harvest.massive_tokens`, the attention-sink outliers): what SAE training leaves out too. Position 0 and the outliers are neither spliced
    nor zero-ablated; special tokens are (in both runs) but not counted in FVE, L0, density."""
    cfg = sae.cfg
    input_name, target_name = check_sae_names(cfg)
    sums = dict.fromkeys(("sq_err", "cos", "l0", "ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero"), 0.0)
    fired = torch.zeros(cfg.d_sae)
    y_sum, y_sq_sum = torch.zeros(cfg.d_output, dtype=torch.float64), 0.0
    n_tokens = n_predictions = 0
    splice = splice_hooks(sae, skip_first=skip_first, outlier_ratio=outlier_ratio)
    with torch.no_grad():
        for batch in tokens.split(batch_size):
            clean_logits, cache = model.run_with_cache(batch, list(dict.fromkeys([input_name, target_name])))
            x_all = cache[input_name].flatten(2)  # [b, p, d_in]; per-head activations flattened
            left = massive_tokens(x_all, outlier_ratio)  # not spliced, not zero-ablated
            if skip_first:
                left[:, 0] = True
            kept = ~left & token_mask(model, batch, skip_first=False).to(left.device)  # counted in the metrics
            x = x_all[kept].to(sae.W_enc.dtype)
            y = cache[target_name].flatten(2)[kept].double()
            latents = sae.encode(x)
            y_hat = sae.decode(latents, x).double()
            sums["sq_err"] += float(((y - y_hat) ** 2).sum())
            sums["cos"] += float(torch.nn.functional.cosine_similarity(y, y_hat, dim=-1).sum())
            sums["l0"] += float((latents != 0).sum())
            fired += (latents != 0).sum(0).float().cpu()
            y_sum += y.sum(0).cpu()
            y_sq_sum += float((y**2).sum())
            n_tokens += y.shape[0]
            with model.hooks(splice):
                sae_logits = model(batch)
            keep = left.reshape(*left.shape, *[1] * (cache[target_name].ndim - 2))  # [b, p, 1(, 1)]
            with model.hooks({target_name: lambda y, ctx, keep=keep: y * keep.to(y.dtype)}):  # zero where evaluated
                zero_logits = model(batch)
            for name, logits in (("clean", clean_logits), ("sae", sae_logits), ("zero", zero_logits)):
                sums[f"ce_{name}"] += float(next_token_losses(logits, batch).sum())
            clean_logprobs = clean_logits[:, :-1].float().log_softmax(-1)
            for name, logits in (("sae", sae_logits), ("zero", zero_logits)):
                logprobs = logits[:, :-1].float().log_softmax(-1)
                sums[f"kl_{name}"] += float((clean_logprobs.exp() * (clean_logprobs - logprobs)).sum())
            n_predictions += batch.shape[0] * (batch.shape[1] - 1)
    sq_dev = y_sq_sum - float((y_sum**2).sum()) / n_tokens  # sum ||y - mean||^2
    ce = {k: sums[f"ce_{k}"] / n_predictions for k in ("clean", "sae", "zero")}
    density = fired / n_tokens
    return SAEEvaluation(
        n_tokens=n_tokens, l0=sums["l0"] / n_tokens, fve=1 - sums["sq_err"] / sq_dev,
        mse=sums["sq_err"] / (n_tokens * cfg.d_output), cosine=sums["cos"] / n_tokens,
        ce_clean=ce["clean"], ce_sae=ce["sae"], ce_zero=ce["zero"],
        ce_recovered=(ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
        kl_sae=sums["kl_sae"] / n_predictions, kl_zero=sums["kl_zero"] / n_predictions,
        dead_fraction=float((density == 0).float().mean()), dense_fraction=float((density > dense_threshold).float().mean()),
        density=density,
    )
