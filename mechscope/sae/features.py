"""Inspecting an SAE's latents on a corpus: top-activating contexts, examples at activation
quantiles, activation histograms, density, and direct logit effects.

    features = ms.collect_features(model, sae, windows)        # one pass over token windows [n, ctx]
    report = features.latent(123)                              # LatentReport: top contexts, quantiles, logits
    features.dashboard("dash.html"); features.to_neuronpedia("np.json")

One pass runs the model up to the SAE's block on every window and keeps, per latent, the
maximum activation in every window `[n_windows, d_sae]` (and where it was), the number of
tokens it fires on, and a histogram of its non-zero activations on fixed log-spaced bins.
Per-token activations of the few windows a report shows are recomputed when asked for.
Position 0 (the attention sink) and special tokens are left out, as in training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import SelectionError
from ..models.hooked import HookedModel
from .modules import SAE
from .store import massive_tokens, run_to, token_mask

HISTOGRAM_EDGES = torch.logspace(-3, 3, 61)  # non-zero activations from 1e-3 to 1e3, 10 bins a decade


@dataclass
class Example:
    """One context: its tokens (as strings), the latent's activation on each, and where it peaks
    (``peak`` indexes ``tokens``; ``start`` is where they begin in the window)."""

    window: int
    tokens: list[str]
    values: list[float]
    peak: int
    max_value: float
    start: int = 0


@dataclass
class LatentReport:
    """Everything shown about one latent (values in the SAE's activation units)."""

    latent: int
    density: float  # fraction of tokens it fires on
    max_activation: float
    top: list[Example]
    quantiles: list[dict]  # {"low", "high", "examples": [Example]} from the weakest group to the strongest
    histogram_counts: list[int]  # non-zero activations per bin of HISTOGRAM_EDGES
    promoted: list[tuple[str, float]]  # tokens whose logits its decoder direction raises most
    suppressed: list[tuple[str, float]]
    label: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FeatureData:
    """The per-latent statistics of one pass over ``windows`` (see `collect_features`)."""

    model: HookedModel = field(repr=False)
    sae: SAE = field(repr=False)
    windows: torch.Tensor  # [n_windows, ctx] token ids
    window_max: torch.Tensor  # [n_windows, d_sae]
    window_argmax: torch.Tensor  # [n_windows, d_sae] position of the maximum
    fire_counts: torch.Tensor  # [d_sae] tokens each latent fired on
    histogram: torch.Tensor  # [d_sae, len(HISTOGRAM_EDGES) - 1]
    n_tokens: int  # tokens counted (position 0 and special tokens excluded)
    skip_first: bool = True
    outlier_ratio: float | None = 10.0
    labels: dict[int, str] = field(default_factory=dict)

    @property
    def density(self) -> torch.Tensor:
        """`[d_sae]` fraction of tokens each latent fires on."""
        return self.fire_counts.double() / max(1, self.n_tokens)

    def token_activations(self, window_ids: Sequence[int], latents: Sequence[int], *,
                          batch_size: int = 16) -> torch.Tensor:
        """Activations of ``latents`` on every token of the given windows: `[len(window_ids), ctx, len(latents)]`
        (0 at the positions left out of the statistics)."""
        ids = torch.as_tensor(list(window_ids), dtype=torch.long)
        columns = torch.as_tensor(list(latents), dtype=torch.long)
        out = []
        for chunk in ids.split(batch_size):
            out.append(self._latents(self.windows[chunk])[0][..., columns])
        return torch.cat(out) if out else torch.zeros(0, self.windows.shape[1], len(columns))

    def _latents(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents `[b, ctx, d_sae]` of token ids `[b, ctx]`, zero where a token does not count,
        and which tokens count `[b, ctx]` (not special, not position 0 with skip_first, not a
        `store.massive_tokens` outlier)."""
        name = self.sae.cfg.hook_name
        acts = run_to(self.model, [name], tokens)[name]
        counted = token_mask(self.model, tokens, skip_first=self.skip_first) & ~massive_tokens(acts, self.outlier_ratio).cpu()
        with torch.no_grad():
            latents = self.sae.encode(acts.to(self.sae.W_enc.device, self.sae.W_enc.dtype)).float().cpu()
        return latents * counted[..., None], counted

    def logit_effects(self, latents: Sequence[int], k: int = 10) -> list[tuple[list, list]]:
        """Per latent, the ``k`` tokens whose logits its decoder direction raises most and
        lowers most: ``(W_dec[j] through the final norm) @ W_U``, the norm's input scale frozen
        (at 1: rankings do not depend on it). Returns ``[(promoted, suppressed)]`` of (token, value)."""
        with torch.no_grad():
            w_u = self.model.weights(fold_norm=True).W_U.float()  # [d_model, d_vocab], final norm weight folded in
            rows = self.sae.W_dec[torch.as_tensor(list(latents), dtype=torch.long)].to(w_u.device, torch.float32)
            if self.model.cfg.normalization == "LayerNorm":
                rows = rows - rows.mean(-1, keepdim=True)
            effects = (rows @ w_u).cpu()
        top, bottom = effects.topk(k, dim=-1), effects.topk(k, dim=-1, largest=False)
        decode = self.model.tokenizer.convert_ids_to_tokens if self.model.tokenizer is not None else str
        return [([(_show(decode(int(i))), float(v)) for i, v in zip(t_i, t_v)],
                 [(_show(decode(int(i))), float(v)) for i, v in zip(b_i, b_v)])
                for t_i, t_v, b_i, b_v in zip(top.indices, top.values, bottom.indices, bottom.values)]

    def latent(self, j: int, **options) -> LatentReport:
        """The report of latent ``j`` (options as for `latents`)."""
        return self.latents([j], **options)[0]

    def latents(self, js: Sequence[int], *, n_top: int = 10, n_quantiles: int = 5, per_quantile: int = 3,
                context: tuple[int, int] = (24, 8), seed: int = 0, chunk: int = 128) -> list[LatentReport]:
        """Reports of latents ``js``: ``n_top`` top contexts and ``per_quantile`` examples from
        each of ``n_quantiles`` groups, each cut to ``context`` tokens before and after its peak.
        The windows they show are recomputed in one batched pass per ``chunk`` latents."""
        js = list(js)
        d_sae = self.window_max.shape[1]
        for j in js:
            if not 0 <= j < d_sae:
                raise SelectionError(f"latent {j} is out of range: the SAE has {d_sae} latents")
        if len(js) > chunk:  # the per-token values of one chunk of latents at a time
            return [r for start in range(0, len(js), chunk)
                    for r in self.latents(js[start : start + chunk], n_top=n_top, n_quantiles=n_quantiles,
                                          per_quantile=per_quantile, context=context, seed=seed + start, chunk=chunk)]
        generator = torch.Generator().manual_seed(seed)
        picks = {j: self._pick(j, n_top, n_quantiles, per_quantile, generator) for j in js}
        needed = sorted({w for top, groups in picks.values() for w in top + [w for g in groups for w in g[2]]})
        values = self.token_activations(needed, list(js)) if needed else None
        row_of = {w: i for i, w in enumerate(needed)}
        effects = self.logit_effects(js) if self.sae.cfg.d_output == self.model.cfg.d_model else [([], [])] * len(js)
        reports = []
        for column, j in enumerate(js):
            top, groups = picks[j]

            def example(w: int, column: int = column) -> Example:
                acts = values[row_of[w], :, column]
                peak = int(acts.argmax())
                lo, hi = max(0, peak - context[0]), peak + context[1] + 1
                return Example(w, self._tokens(w)[lo:hi], [round(float(a), 4) for a in acts[lo:hi]], peak - lo,
                               round(float(acts.max()), 4), lo)

            reports.append(LatentReport(
                latent=j, density=float(self.density[j]), max_activation=float(self.window_max[:, j].max()),
                top=[example(w) for w in top],
                quantiles=[{"low": low, "high": high, "examples": [example(w) for w in ws]} for low, high, ws in groups],
                histogram_counts=[int(c) for c in self.histogram[j]], promoted=effects[column][0],
                suppressed=effects[column][1], label=self.labels.get(j, "")))
        return reports

    def _pick(self, j: int, n_top: int, n_quantiles: int, per_quantile: int, generator: torch.Generator):
        """The top windows, and per equal-count group of the firing windows (sorted by their
        maximum) up to ``per_quantile`` random ones: ``(top, [(low, high, windows)])``."""
        maxes = self.window_max[:, j]
        firing = (maxes > 0).nonzero().squeeze(-1)
        order = firing[maxes[firing].argsort()]
        top = order.flip(0)[:n_top].tolist()
        groups = []
        if len(order):
            for part in order.tensor_split(min(n_quantiles, len(order))):
                chosen = part[torch.randperm(len(part), generator=generator)[:per_quantile]]
                groups.append((float(maxes[part].min()), float(maxes[part].max()), chosen.tolist()))
        return top, groups

    def _tokens(self, w: int) -> list[str]:
        tokenizer = self.model.tokenizer
        ids = self.windows[w].tolist()
        return [_show(t) for t in tokenizer.convert_ids_to_tokens(ids)] if tokenizer is not None else [str(i) for i in ids]

    def dashboard(self, path: str | os.PathLike, latents: Sequence[int] | None = None, *, title: str = "",
                  **report_options) -> Path:
        """A self-contained HTML page: a searchable list of ``latents`` (default: every latent
        that fires) and a page per latent. Returns the path."""
        from .dashboard import write_dashboard

        js = self._default_latents(latents)
        reports = self.latents(js, **report_options)
        return write_dashboard(Path(path), reports, self._meta(), HISTOGRAM_EDGES.tolist(), title=title)

    def to_neuronpedia(self, path: str | os.PathLike, latents: Sequence[int] | None = None, *,
                       model_id: str = "", sae_id: str = "", **report_options) -> Path:
        """A Neuronpedia-style JSON export: ``{"modelId", "saeId", "features": [...]}``, each
        feature with ``index``, ``maxActApprox``, ``frac_nonzero``, ``pos_str``/``pos_values``,
        ``neg_str``/``neg_values``, ``freq_hist_data_bar_heights``/``_values`` (parallel lists:
        counts and bin centres) and ``activations`` (tokens, values, maxValue,
        maxValueTokenIndex; bin_min/bin_max for quantile examples)."""
        js = self._default_latents(latents)
        centres = ((HISTOGRAM_EDGES[1:] * HISTOGRAM_EDGES[:-1]) ** 0.5).tolist()
        features = []
        for report in self.latents(js, **report_options):
            activations = [_np_activation(e) for e in report.top]
            for group in report.quantiles:
                activations += [{**_np_activation(e), "bin_min": group["low"], "bin_max": group["high"]}
                                for e in group["examples"]]
            features.append({
                "modelId": model_id or self.sae.cfg.model_name, "layer": sae_id or self.sae.cfg.hook_name,
                "index": str(report.latent), "maxActApprox": report.max_activation, "frac_nonzero": report.density,
                "pos_str": [t for t, _ in report.promoted], "pos_values": [v for _, v in report.promoted],
                "neg_str": [t for t, _ in report.suppressed], "neg_values": [v for _, v in report.suppressed],
                "freq_hist_data_bar_heights": report.histogram_counts, "freq_hist_data_bar_values": centres,
                "activations": activations, "explanations": [{"description": report.label}] if report.label else [],
            })
        path = Path(path)
        path.write_text(json.dumps({"modelId": model_id or self.sae.cfg.model_name,
                                    "saeId": sae_id or self.sae.cfg.hook_name, "features": features}))
        return path

    def _default_latents(self, latents: Sequence[int] | None) -> list[int]:
        if latents is not None:
            return list(latents)
        return (self.fire_counts > 0).nonzero().squeeze(-1).tolist()

    def _meta(self) -> dict:
        cfg = self.sae.cfg
        return {"model": cfg.model_name, "hook": cfg.hook_name, "architecture": cfg.architecture,
                "d_sae": cfg.d_sae, "n_tokens": self.n_tokens, "n_windows": len(self.windows),
                "dead_fraction": float((self.fire_counts == 0).double().mean())}


def collect_features(model: HookedModel, sae: SAE, windows: torch.Tensor, *, batch_size: int = 16,
                     skip_first: bool = True, outlier_ratio: float | None = 10.0,
                     progress: bool = True) -> FeatureData:
    """One pass over token ``windows`` `[n, ctx]`: per-window maxima, firing counts and
    activation histograms of every latent of ``sae`` (which reads ``sae.cfg.hook_name``).
    Special tokens, position 0 (``skip_first``) and `store.massive_tokens` outliers
    (``outlier_ratio``) do not count."""
    if windows.ndim != 2:
        raise SelectionError(f"windows must be token ids [n, ctx], got shape {tuple(windows.shape)}")
    d_sae = sae.cfg.d_sae
    maxes, argmaxes = [], []
    counts = torch.zeros(d_sae, dtype=torch.long)
    histogram = torch.zeros(d_sae, len(HISTOGRAM_EDGES) - 1, dtype=torch.long)
    data = FeatureData(model, sae, windows, torch.empty(0), torch.empty(0), counts, histogram, 0, skip_first,
                       outlier_ratio)
    n_tokens = 0
    for batch in tqdm(windows.split(batch_size), disable=not progress, desc="latent statistics"):
        latents, counted = data._latents(batch)  # [b, ctx, d_sae], zero where not counted
        best = latents.max(dim=1)
        maxes.append(best.values)
        argmaxes.append(best.indices.to(torch.int16 if batch.shape[1] < 2**15 else torch.int32))
        nonzero = latents != 0
        counts += nonzero.sum((0, 1))
        n_tokens += int(counted.sum())
        token, latent = nonzero.reshape(-1, d_sae).nonzero(as_tuple=True)
        values = latents.reshape(-1, d_sae)[token, latent]
        bins = torch.bucketize(values, HISTOGRAM_EDGES[1:-1])
        histogram.view(-1).index_add_(0, latent * histogram.shape[1] + bins, torch.ones_like(bins))
    data.window_max, data.window_argmax, data.n_tokens = torch.cat(maxes), torch.cat(argmaxes), n_tokens
    return data


def _np_activation(example: Example) -> dict:
    return {"tokens": example.tokens, "values": example.values, "maxValue": example.max_value,
            "maxValueTokenIndex": example.peak}


def _show(token: str) -> str:
    """A BPE token as text: the byte-level space and newline markers made visible characters."""
    return token.replace("\u0120", " ").replace("\u010a", "\\n").replace("\u0109", "\\t")

