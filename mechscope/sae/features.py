"""Inspecting an SAE's latents on a corpus: top-activating contexts, examples at activation
quantiles, activation histograms, density, and direct logit effects.

    features = ms.collect_features(model, sae, windows)        # one pass over token windows [n, ctx]
    features.save("features.safetensors")                      # a result: statistics only, no model
    report = features.latent(model, sae, 123)                  # LatentReport: top contexts, quantiles, logits
    features.dashboard(model, sae, "dash.html"); features.to_neuronpedia(model, sae, "np.json")

One pass runs the model up to the SAE's block on every window and keeps, per latent, the
maximum activation in every window `[n_windows, d_sae]` (and where it was), the number of
tokens it fires on, and a histogram of its non-zero activations on fixed log-spaced bins.
Per-token activations of the few windows a report shows are recomputed when asked for, which
is why the methods that make reports take the model and the SAE (`FeatureData` holds neither).
Position 0 (the attention sink) and special tokens are left out, as in training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.harvest import massive_tokens, token_mask
from ..errors import ResultMismatchError, SelectionError
from ..models.hooked import HookedModel
from ..models.tokens import token_texts, visible
from ..result import Result
from ..viz import figures
from .dashboard import write_dashboard
from .modules import SAE
from .splice import check_sae_names

HISTOGRAM_EDGES = torch.logspace(-3, 3, 61)  # non-zero activations from 1e-3 to 1e3, 10 bins a decade


@dataclass
class Example:
    """One context: its tokens (each decoded on its own, `models.tokens.token_texts`: ``" Mary"``),
    the latent's activation on each, and where it peaks (``peak`` indexes ``tokens``; ``start``
    is where they begin in the window). Displays show the tokens as `models.tokens.visible` labels."""

    window: int
    tokens: list[str]
    values: list[float]
    peak: int
    max_value: float
    start: int = 0


@dataclass
class LatentReport(Result):
    """Everything shown about one latent (values in the SAE's activation units).

    Protocol (`mechscope.result`): ``to_dataframe()`` has a row per token of the examples
    shown (group, example, window, position, token, activation); ``top(n)`` the strongest
    tokens; ``plot()`` the examples as rows aligned on their peak, tokens written in the cells.
    """

    latent: int
    density: float  # fraction of tokens it fires on
    max_activation: float
    top_examples: list[Example]  # the top-activating contexts, strongest first
    quantiles: list[dict]  # {"low", "high", "examples": [Example]} from the weakest group to the strongest
    histogram_counts: list[int]  # non-zero activations per bin of HISTOGRAM_EDGES
    promoted: list[tuple[str, float]]  # tokens whose logits its decoder direction raises most
    suppressed: list[tuple[str, float]]
    label: str = ""

    _value = "activation"
    _signed = False

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        label = f" ({self.label})" if self.label else ""
        return (f"latent {self.latent}{label}: density {self.density:.3%}, max activation {self.max_activation:.3g}, "
                f"{len(self.top_examples)} top contexts, {len(self.quantiles)} quantile groups")

    def _examples(self) -> list[tuple[str, int, Example]]:
        shown = [("top", i, e) for i, e in enumerate(self.top_examples)]
        for g, group in enumerate(self.quantiles):
            shown += [(f"quantile {g + 1} [{group['low']:.3g}, {group['high']:.3g}]", i, e)
                      for i, e in enumerate(group["examples"])]
        return shown

    def to_dataframe(self) -> pd.DataFrame:
        """One row per token of every example shown: ``group`` ("top" or the quantile group),
        ``example`` (its index in the group), ``window``, ``position`` (in the window),
        ``offset`` (from the example's peak), ``token`` (its label: decoded text, whitespace made
        visible, ``"·Mary"``), ``activation``, ``peak``."""
        rows = [{"group": group, "example": i, "window": e.window, "position": e.start + t, "offset": t - e.peak,
                 "token": visible(token), "activation": float(value), "peak": t == e.peak}
                for group, i, e in self._examples() for t, (token, value) in enumerate(zip(e.tokens, e.values))]
        columns = ["group", "example", "window", "position", "offset", "token", "activation", "peak"]
        return pd.DataFrame(rows, columns=columns)

    def plot(self, value: str | None = None, **selection):
        """The examples as rows (top contexts first), aligned on their peak token (column 0),
        coloured by activation, each cell showing its token."""
        frame = self.plot_data(value, **selection)
        column = self.plot_column(value)
        keys = list(dict.fromkeys(zip(frame["group"], frame["example"])))
        offsets = list(range(int(frame["offset"].min()), int(frame["offset"].max()) + 1))
        z = np.full((len(keys), len(offsets)), np.nan)
        text = np.full(z.shape, "", dtype=object)
        row_of = {k: r for r, k in enumerate(keys)}
        for group, example, offset, token, v in zip(frame["group"], frame["example"], frame["offset"], frame["token"],
                                                   frame[column]):
            r, c = row_of[(group, example)], int(offset) - offsets[0]
            z[r, c], text[r, c] = v, token
        windows = frame.drop_duplicates(["group", "example"]).set_index(["group", "example"])["window"]
        rows = [f"{g.split(' [')[0]} #{i + 1} (window {int(windows[(g, i)])})" for g, i in keys]
        label = f": {self.label}" if self.label else ""
        return figures.heatmap(z, [str(o) for o in offsets], rows, title=f"Latent {self.latent}{label} "
                               f"(density {self.density:.3%}, max {self.max_activation:.3g})", text=text,
                               hover={"token": text}, x_label="offset from the peak", y_label="example",
                               z_label=column, zmin=0.0, height=max(360, 120 + 26 * len(rows)))

    def _to_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {}, self.to_dict()

    @classmethod
    def _from_state(cls, tensors: dict[str, torch.Tensor], fields: dict) -> LatentReport:
        fields = dict(fields)
        fields["top_examples"] = [Example(**e) for e in fields["top_examples"]]
        fields["quantiles"] = [{**g, "examples": [Example(**e) for e in g["examples"]]} for g in fields["quantiles"]]
        fields["promoted"] = [tuple(p) for p in fields["promoted"]]
        fields["suppressed"] = [tuple(p) for p in fields["suppressed"]]
        return cls(**fields)


@dataclass
class FeatureData(Result):
    """The per-latent statistics of one pass over ``windows`` (see `collect_features`).

    It holds no model and no SAE: ``sae_info`` records which SAE it describes (model name,
    hook, architecture, width), and the methods that show contexts or logit effects
    recompute them from the model and SAE they are given (checked against ``sae_info``).

    Protocol (`mechscope.result`): ``to_dataframe()`` has a row per latent (firing count,
    density, maximum activation, label); ``top(n)`` the densest latents (``top(n,
    by="max_activation")`` the strongest); ``plot()`` the histogram of log10 density.
    """

    windows: torch.Tensor  # [n_windows, ctx] token ids
    window_max: torch.Tensor  # [n_windows, d_sae]
    window_argmax: torch.Tensor  # [n_windows, d_sae] position of the maximum
    fire_counts: torch.Tensor  # [d_sae] tokens each latent fired on
    histogram: torch.Tensor  # [d_sae, len(HISTOGRAM_EDGES) - 1]
    n_tokens: int  # tokens counted (position 0 and special tokens excluded)
    skip_first: bool = True
    outlier_ratio: float | None = 10.0
    labels: dict[int, str] = field(default_factory=dict)
    sae_info: dict = field(default_factory=dict)  # model, hook, architecture, d_sae, d_output

    _value = "density"
    _signed = False
    _plot_value = "log10_density"

    @property
    def density(self) -> torch.Tensor:
        """`[d_sae]` fraction of tokens each latent fires on."""
        return self.fire_counts.double() / max(1, self.n_tokens)

    def summary(self) -> str:
        alive = int((self.fire_counts > 0).sum())
        return (f"latent statistics of {self.sae_info.get('hook', 'an SAE')} over {len(self.windows)} windows "
                f"({self.n_tokens:,} tokens): {alive} of {len(self.fire_counts)} latents fire")

    def to_dataframe(self) -> pd.DataFrame:
        """One row per latent: ``latent``, ``fire_count``, ``density``, ``log10_density`` (NaN
        when it never fires), ``max_activation`` (over the windows) and ``label``."""
        density = self.density.cpu().numpy()
        with np.errstate(divide="ignore"):
            log = np.where(density > 0, np.log10(np.where(density > 0, density, 1.0)), np.nan)
        maxima = (self.window_max.max(0).values.float().cpu().numpy() if self.window_max.numel()
                  else np.zeros(len(density)))
        return pd.DataFrame({"latent": np.arange(len(density)), "fire_count": self.fire_counts.cpu().numpy(),
                             "density": density, "log10_density": log, "max_activation": maxima.astype(float),
                             "label": [self.labels.get(j, "") for j in range(len(density))]})

    def plot(self, value: str | None = None, *, bins: int = 40, **selection):
        """Histogram of ``log10_density`` over the latents that fire (``value`` picks another column)."""
        frame = self.plot_data(value, **selection)
        column = self.plot_column(value)
        dead = int((frame["fire_count"] == 0).sum())
        title = (f"Latent density of {self.sae_info.get('hook', 'the SAE')} over {self.n_tokens:,} tokens "
                 f"({dead} of {len(frame)} latents never fire)")
        return figures.histogram(frame[column].to_numpy(float), title=title, x_label=column, bins=bins)

    def _check(self, model: HookedModel, sae: SAE) -> None:
        cfg = sae.cfg
        if self.sae_info and (cfg.hook_name != self.sae_info.get("hook") or cfg.d_sae != self.sae_info.get("d_sae")):
            raise ResultMismatchError(f"these statistics describe an SAE on {self.sae_info.get('hook')} with "
                                      f"{self.sae_info.get('d_sae')} latents, not this one ({cfg.hook_name}, {cfg.d_sae})")
        if len(self.windows) and int(self.windows.max()) >= model.cfg.d_vocab:
            raise ResultMismatchError(f"the windows hold token ids up to {int(self.windows.max())}, "
                                      f"beyond this model's vocabulary of {model.cfg.d_vocab}")

    def token_activations(self, model: HookedModel, sae: SAE, window_ids: Sequence[int], latents: Sequence[int], *,
                          batch_size: int = 16) -> torch.Tensor:
        """Activations of ``latents`` on every token of the given windows: `[len(window_ids), ctx, len(latents)]`
        (0 at the positions left out of the statistics)."""
        self._check(model, sae)
        ids = torch.as_tensor(list(window_ids), dtype=torch.long)
        columns = torch.as_tensor(list(latents), dtype=torch.long)
        out = []
        for chunk in ids.split(batch_size):
            out.append(_latents(model, sae, self.windows[chunk], self.skip_first, self.outlier_ratio)[0][..., columns])
        return torch.cat(out) if out else torch.zeros(0, self.windows.shape[1], len(columns))

    def logit_effects(self, model: HookedModel, sae: SAE, latents: Sequence[int], k: int = 10) -> list[tuple[list, list]]:
        """Per latent, the ``k`` tokens whose logits its decoder direction raises most and
        lowers most: ``(W_dec[j] through the final norm) @ W_U``, the norm's input scale frozen
        (at 1: rankings do not depend on it). Returns ``[(promoted, suppressed)]`` of (token, value),
        tokens as decoded text (`models.tokens.token_texts`)."""
        self._check(model, sae)
        with torch.no_grad():
            w_u = model.weights(fold_norm=True).W_U.float()  # [d_model, d_vocab], final norm weight folded in
            rows = sae.W_dec[torch.as_tensor(list(latents), dtype=torch.long)].to(w_u.device, torch.float32)
            if model.cfg.normalization == "LayerNorm":
                rows = rows - rows.mean(-1, keepdim=True)
            effects = (rows @ w_u).cpu()
        top, bottom = effects.topk(k, dim=-1), effects.topk(k, dim=-1, largest=False)
        return [(list(zip(_tokens(model, t_i), t_v.tolist())), list(zip(_tokens(model, b_i), b_v.tolist())))
                for t_i, t_v, b_i, b_v in zip(top.indices, top.values, bottom.indices, bottom.values)]

    def latent(self, model: HookedModel, sae: SAE, j: int, **options) -> LatentReport:
        """The report of latent ``j`` (options as for `latents`)."""
        return self.latents(model, sae, [j], **options)[0]

    def latents(self, model: HookedModel, sae: SAE, js: Sequence[int], *, n_top: int = 10, n_quantiles: int = 5,
                per_quantile: int = 3, context: tuple[int, int] = (24, 8), seed: int = 0,
                chunk: int = 128) -> list[LatentReport]:
        """Reports of latents ``js``: ``n_top`` top contexts and ``per_quantile`` examples from
        each of ``n_quantiles`` groups, each cut to ``context`` tokens before and after its peak.
        The windows they show are recomputed in one batched pass per ``chunk`` latents."""
        self._check(model, sae)
        js = list(js)
        d_sae = self.window_max.shape[1]
        for j in js:
            if not 0 <= j < d_sae:
                raise SelectionError(f"latent {j} is out of range: the SAE has {d_sae} latents")
        if len(js) > chunk:  # the per-token values of one chunk of latents at a time
            return [r for start in range(0, len(js), chunk)
                    for r in self.latents(model, sae, js[start : start + chunk], n_top=n_top, n_quantiles=n_quantiles,
                                          per_quantile=per_quantile, context=context, seed=seed + start, chunk=chunk)]
        generator = torch.Generator().manual_seed(seed)
        picks = {j: self._pick(j, n_top, n_quantiles, per_quantile, generator) for j in js}
        needed = sorted({w for top, groups in picks.values() for w in top + [w for g in groups for w in g[2]]})
        values = self.token_activations(model, sae, needed, list(js)) if needed else None
        row_of = {w: i for i, w in enumerate(needed)}
        effects = (self.logit_effects(model, sae, js) if sae.cfg.d_output == model.cfg.d_model
                   else [([], [])] * len(js))
        reports = []
        for column, j in enumerate(js):
            top, groups = picks[j]

            def example(w: int, column: int = column) -> Example:
                acts = values[row_of[w], :, column]
                peak = int(acts.argmax())
                lo, hi = max(0, peak - context[0]), peak + context[1] + 1
                return Example(w, _tokens(model, self.windows[w])[lo:hi], [round(float(a), 4) for a in acts[lo:hi]],
                               peak - lo, round(float(acts.max()), 4), lo)

            reports.append(LatentReport(
                latent=j, density=float(self.density[j]), max_activation=float(self.window_max[:, j].max()),
                top_examples=[example(w) for w in top],
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

    def dashboard(self, model: HookedModel, sae: SAE, path: str | os.PathLike, latents: Sequence[int] | None = None, *,
                  title: str = "", **report_options) -> Path:
        """A self-contained HTML page: a searchable list of ``latents`` (default: every latent
        that fires) and a page per latent. Returns the path."""

        js = self._default_latents(latents)
        reports = self.latents(model, sae, js, **report_options)
        return write_dashboard(Path(path), reports, self._meta(), HISTOGRAM_EDGES.tolist(), title=title)

    def to_neuronpedia(self, model: HookedModel, sae: SAE, path: str | os.PathLike, latents: Sequence[int] | None = None,
                       *, model_id: str = "", sae_id: str = "", **report_options) -> Path:
        """A Neuronpedia-style JSON export: ``{"modelId", "saeId", "features": [...]}``, each
        feature with ``index``, ``maxActApprox``, ``frac_nonzero``, ``pos_str``/``pos_values``,
        ``neg_str``/``neg_values``, ``freq_hist_data_bar_heights``/``_values`` (parallel lists:
        counts and bin centres) and ``activations`` (tokens, values, maxValue,
        maxValueTokenIndex; bin_min/bin_max for quantile examples)."""
        js = self._default_latents(latents)
        centres = ((HISTOGRAM_EDGES[1:] * HISTOGRAM_EDGES[:-1]) ** 0.5).tolist()
        model_id = model_id or self.sae_info.get("model", "")
        sae_id = sae_id or self.sae_info.get("hook", "")
        features = []
        for report in self.latents(model, sae, js, **report_options):
            activations = [_np_activation(e) for e in report.top_examples]
            for group in report.quantiles:
                activations += [{**_np_activation(e), "bin_min": group["low"], "bin_max": group["high"]}
                                for e in group["examples"]]
            features.append({
                "modelId": model_id, "layer": sae_id,
                "index": str(report.latent), "maxActApprox": report.max_activation, "frac_nonzero": report.density,
                "pos_str": [t for t, _ in report.promoted], "pos_values": [v for _, v in report.promoted],
                "neg_str": [t for t, _ in report.suppressed], "neg_values": [v for _, v in report.suppressed],
                "freq_hist_data_bar_heights": report.histogram_counts, "freq_hist_data_bar_values": centres,
                "activations": activations, "explanations": [{"description": report.label}] if report.label else [],
            })
        path = Path(path)
        path.write_text(json.dumps({"modelId": model_id, "saeId": sae_id, "features": features}))
        return path

    def _default_latents(self, latents: Sequence[int] | None) -> list[int]:
        if latents is not None:
            return list(latents)
        return (self.fire_counts > 0).nonzero().squeeze(-1).tolist()

    def _meta(self) -> dict:
        info = self.sae_info
        return {"model": info.get("model", ""), "hook": info.get("hook", ""), "architecture": info.get("architecture", ""),
                "d_sae": info.get("d_sae", len(self.fire_counts)), "n_tokens": self.n_tokens,
                "n_windows": len(self.windows), "dead_fraction": float((self.fire_counts == 0).double().mean())}


def _latents(model: HookedModel, sae: SAE, tokens: torch.Tensor, skip_first: bool, outlier_ratio: float | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents `[b, ctx, d_sae]` of token ids `[b, ctx]`, zero where a token does not count,
    and which tokens count `[b, ctx]` (not special, not position 0 with skip_first, not a
    `store.massive_tokens` outlier)."""
    name, _ = check_sae_names(sae.cfg)
    acts = model.run_with_cache(tokens, name, stop_early=True)[1][name].flatten(2)  # per-head: heads flattened
    counted = token_mask(model, tokens, skip_first=skip_first) & ~massive_tokens(acts, outlier_ratio).cpu()
    with torch.no_grad():
        latents = sae.encode(acts.to(sae.W_enc.device, sae.W_enc.dtype)).float().cpu()
    return latents * counted[..., None], counted


def _tokens(model: HookedModel, ids: torch.Tensor) -> list[str]:
    """Token ids `[n]` as decoded text, one string each (their ids without a tokenizer)."""
    ids = ids.tolist()
    return token_texts(model.tokenizer, ids) if model.tokenizer is not None else [str(i) for i in ids]


def collect_features(model: HookedModel, sae: SAE, windows: torch.Tensor, *, batch_size: int = 16,
                     skip_first: bool = True, outlier_ratio: float | None = 10.0,
                     progress: bool = True) -> FeatureData:
    """One pass over token ``windows`` `[n, ctx]`: per-window maxima, firing counts and
    activation histograms of every latent of ``sae`` (which reads ``sae.cfg.hook_name``).
    Special tokens, position 0 (``skip_first``) and `store.massive_tokens` outliers
    (``outlier_ratio``) do not count."""
    if windows.ndim != 2:
        raise SelectionError(f"windows must be token ids [n, ctx], got shape {tuple(windows.shape)}")
    check_sae_names(sae.cfg)
    d_sae = sae.cfg.d_sae
    maxes, argmaxes = [], []
    counts = torch.zeros(d_sae, dtype=torch.long)
    histogram = torch.zeros(d_sae, len(HISTOGRAM_EDGES) - 1, dtype=torch.long)
    cfg = sae.cfg
    info = {"model": cfg.model_name, "hook": cfg.hook_name, "architecture": cfg.architecture, "d_sae": cfg.d_sae,
            "d_output": cfg.d_output}
    n_tokens = 0
    for batch in tqdm(windows.split(batch_size), disable=not progress, desc="latent statistics"):
        latents, counted = _latents(model, sae, batch, skip_first, outlier_ratio)  # [b, ctx, d_sae], zero where not counted
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
    return FeatureData(windows.cpu(), torch.cat(maxes), torch.cat(argmaxes), counts, histogram, n_tokens, skip_first,
                       outlier_ratio, sae_info=info)


def _np_activation(example: Example) -> dict:
    return {"tokens": example.tokens, "values": example.values, "maxValue": example.max_value,
            "maxValueTokenIndex": example.peak}

