"""Causal tracing (Meng et al. 2022, ROME): where a model recalls a fact.

The subject's token embeddings are corrupted with Gaussian noise (``noise_factor`` times the
embedding std, the same ``n_samples`` draws everywhere), which makes the model lose the
attribute. Then one clean activation at a time is restored into the noised run, and the
probability of the attribute token at the last position measures how much of the recall
that activation carries:

- "resid": the hidden state after block ``l`` (``blocks.{l}.resid_post``) at one token;
- "mlp" / "attn": the MLP / attention output (``blocks.*.mlp.out`` / ``blocks.*.attn.out``)
  at one token in a window of ``window`` layers centred on ``l`` (``l - window//2`` up to
  ``l + (window+1)//2 - 1``, clipped at the ends), as in ROME.

All cells and noise samples are stacked along the batch axis (``cells x n_samples`` rows per
forward). A cell's run equals the noised run up to its first restored block, so its forward
starts there from the noised run's hidden state (`HookedModel.run_from`), and only the last
position is unembedded. Tokens before the subject are the same in the clean and the noised
run, so their cells are the noised probability without being run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from ..data.facts import FactPrompt
from ..errors import SelectionError
from ..models.hooked import HookedModel
from ..models.runtime import HookContext, HookFn
from ..models.tokens import token_texts, visible
from ..result import Result
from ..viz import figures
from .sweep import Stack, VariantSweep, resid_names

KINDS = {"resid": "resid_post", "mlp": "mlp.out", "attn": "attn.out"}
Restoration = Mapping[str, Sequence[int]]  # activation name -> token positions restored to clean


@dataclass
class CausalTrace(Result):
    """Result of `causal_trace`.

    scores: kind -> `[n_layers, n_tokens]` probability of the attribute token (mean over the
      noise samples) with the clean activation of (layer, token) restored.
    clean_prob: the clean run's probability; corrupted_prob: the noised run's (mean over samples).
    str_tokens: the prompt's tokens as text, each decoded on its own (`token_texts`; tables and
      plots show them with whitespace made visible, `visible`); subject_positions: the noised ones.
    noise_std: the standard deviation of the noise that was added (factor included).

    Protocol (`mechscope.result`): ``to_dataframe()`` has a row per (kind, layer, position);
    ``top(n, kind=...)`` ranks cells by indirect effect; ``plot()`` draws ROME's heatmaps
    (tokens x layers, one per kind, diverging at 0, the probability in the hover box).
    """

    str_tokens: list[str]
    subject_positions: list[int]
    attribute: str
    attribute_token: int
    clean_prob: float
    corrupted_prob: float
    scores: dict[str, torch.Tensor]
    window: int
    n_samples: int
    noise_std: float

    _value = "indirect_effect"
    _signed = True

    def token_labels(self) -> list[str]:
        """``"3 ·Tower *"``: position, token (whitespace made visible), and ``*`` on subject tokens."""
        return [f"{i} {visible(t)}{' *' if i in self.subject_positions else ''}" for i, t in enumerate(self.str_tokens)]

    def peak(self, kind: str) -> tuple[int, int, float]:
        """``(layer, position, probability)`` of the cell that restores the most."""
        values = self._scores(kind)
        flat = int(values.argmax())
        layer, position = divmod(flat, values.shape[1])
        return layer, position, float(values[layer, position])

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (kind, layer, position): the token (whitespace made visible), whether it is
        a subject token, the restored probability and its indirect effect (restored minus
        corrupted probability)."""
        records = []
        for kind, values in self.scores.items():
            for layer in range(values.shape[0]):
                for pos, token in enumerate(map(visible, self.str_tokens)):
                    prob = float(values[layer, pos])
                    records.append({"kind": kind, "layer": layer, "position": pos, "token": token,
                                    "subject": pos in self.subject_positions, "prob": prob,
                                    "indirect_effect": prob - self.corrupted_prob})
        return pd.DataFrame(records)

    def summary(self) -> str:
        return (f"causal trace of {self.attribute!r} over {len(self.str_tokens)} tokens (subject "
                f"{self.subject_positions}), kinds {list(self.scores)}; clean p {self.clean_prob:.3f}, "
                f"subject noised {self.corrupted_prob:.3f}")

    def plot(self, value: str | None = None, **selection):
        """ROME's heatmaps: tokens as rows (subject tokens marked ``*``), layers as columns, one
        panel per kind (``kind=`` picks some), on one colour scale; ``value`` is
        ``"indirect_effect"`` (default, diverging at 0) or ``"prob"``."""
        kinds = selection.get("kind")
        for kind in [kinds] if isinstance(kinds, str) else list(kinds or []):
            self._scores(kind)
        frame = self.plot_data(value, **selection)
        column = self.plot_column(value)
        what = {"resid": "hidden state (resid_post)", "mlp": f"MLP output (window {self.window})",
                "attn": f"attention output (window {self.window})"}
        labels = self.token_labels()
        panels = []
        for kind, part in frame.groupby("kind", sort=False):
            z = part.pivot(index="position", columns="layer", values=column)
            prob = part.pivot(index="position", columns="layer", values="prob")
            panels.append({"z": z.to_numpy(float), "x": [str(c) for c in z.columns],
                           "y": [labels[p] for p in z.index], "title": what.get(kind, kind),
                           "hover": {"p(attribute)": prob.to_numpy(float).round(4)}})
        title = (f"Causal trace: p({self.attribute!r}) with one clean activation restored; "
                 f"clean {self.clean_prob:.3f}, subject noised {self.corrupted_prob:.3f}")
        z_label = "indirect effect" if column == "indirect_effect" else column
        return figures.facet_heatmaps(panels, title=title, signed=column == "indirect_effect", x_label="layer",
                                      y_label="token", z_label=z_label)

    def _scores(self, kind: str) -> torch.Tensor:
        if kind not in self.scores:
            raise SelectionError(f"this trace has kinds {list(self.scores)}, not {kind!r}")
        return self.scores[kind]


def _check_fact(model: HookedModel, fact: FactPrompt) -> FactPrompt:
    """``fact`` with its tokens and subject positions as LongTensors (lists are accepted), checked
    against the model; raises `SelectionError` for a fact that cannot be traced."""
    if not isinstance(fact, FactPrompt):
        raise SelectionError(f"a trace needs a FactPrompt (from make_fact or fact_prompts), got {type(fact).__name__}")
    fact = dataclasses.replace(fact)  # re-normalises fields assigned after construction
    tokens, subject = fact.tokens, fact.subject_positions
    if tokens.ndim != 1 or len(tokens) == 0:
        raise SelectionError(f"fact.tokens must be one prompt [pos], got shape {tuple(tokens.shape)}")
    if len(subject) == 0 or int(subject.min()) < 0 or int(subject.max()) >= len(tokens):
        raise SelectionError(f"subject positions {subject.tolist()} are not positions of the {len(tokens)}-token prompt")
    if isinstance(fact.attribute_token, bool) or not 0 <= int(fact.attribute_token) < model.cfg.d_vocab:
        raise SelectionError(f"attribute token {fact.attribute_token} is outside the vocabulary")
    return fact


def embedding_std(model: HookedModel, tokens: torch.Tensor) -> float:
    """Std of the embedding matrix's values ``model.W_E`` as the model applies them: times the
    embedding scale of models that scale embeddings (sqrt(d_model) in Gemma), which is measured
    on ``tokens`` `[pos]` as the ratio of the embedding output's norm to the looked-up rows' norm."""
    with torch.no_grad():
        w_e = model.W_E.detach()
        ids = tokens.to(w_e.device)
        scale = model.embed_tokens(ids).float().norm() / w_e[ids].float().norm()
        return float(w_e.float().std() * scale)


def trace_noise(model: HookedModel, fact: FactPrompt, *, n_samples: int = 10, noise_factor: float = 3.0,
                noise_std: float | None = None, seed: int = 0) -> torch.Tensor:
    """The noise added to the subject's embeddings: `[n_samples, n_subject_tokens, d_model]`,
    Gaussian with std ``noise_factor * noise_std`` (default `embedding_std`), seeded by ``seed``."""
    fact = _check_fact(model, fact)
    if n_samples < 1:
        raise SelectionError(f"n_samples must be at least 1, got {n_samples}")
    std = embedding_std(model, fact.tokens) if noise_std is None else noise_std
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n_samples, len(fact.subject_positions), model.cfg.d_model, generator=generator)
    return noise * (noise_factor * std)


def _hook_adding(noise: torch.Tensor, positions: torch.Tensor) -> HookFn:
    def add(x: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        x = x.clone()
        x[:, positions] += noise.to(x.device, x.dtype)
        return x

    return add


def _hook_restoring(rows: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> HookFn:
    def restore(x: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        return x.index_put((rows.to(x.device), positions.to(x.device)), values.to(x.device, x.dtype))

    return restore


def _start_layer(model: HookedModel, restoration: Restoration) -> int:
    """The first block a restoration touches: the noised run is unchanged before it."""
    layers = [model.hook_point(name).layer for name in restoration]
    if any(layer is None for layer in layers):
        raise SelectionError(f"restorations must name block activations (blocks.{{l}}.*), got {sorted(restoration)}")
    return min(layers, default=model.cfg.n_layers)


def restored_probs(model: HookedModel, fact: FactPrompt, restorations: Sequence[Restoration], noise: torch.Tensor,
                   *, max_rows: int = 256) -> torch.Tensor:
    """Probability of the attribute token at the last position, mean over the noise samples,
    for each restoration: `[len(restorations)]`.

    Each restoration maps block activation names to the token positions where the clean
    activation replaces the noised one (``{}`` gives the noised run itself; ``{"blocks.4.resid_post":
    range(n_tokens)}`` restores the whole hidden state after block 4, which reproduces the
    clean run). noise: `[n_samples, n_subject_tokens, d_model]` from `trace_noise`, added to the
    subject's embeddings in every restoration. ``max_rows`` bounds the batch of one forward
    (restorations x samples). A restoration whose first restored block is ``l`` starts at block
    ``l`` from the noised run's hidden state (`HookedModel.run_from`), and only the last
    position is unembedded.
    """
    fact = _check_fact(model, fact)
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.ndim != 3 or not len(noise):
        raise SelectionError(f"noise must be a float tensor [n_samples, {len(fact.subject_positions)}, "
                             f"{model.cfg.d_model}] from trace_noise, got {_describe(noise)}")
    n_samples, n_tokens = noise.shape[0], len(fact.tokens)
    if noise.shape[1:] != (len(fact.subject_positions), model.cfg.d_model):
        raise SelectionError(f"noise must be [n_samples, {len(fact.subject_positions)}, {model.cfg.d_model}], "
                             f"got {tuple(noise.shape)}")
    bad = [(name, list(p)) for r in restorations for name, p in r.items() if any(not 0 <= i < n_tokens for i in p)]
    if bad:
        raise SelectionError(f"restoration positions outside the {n_tokens}-token prompt: {bad[:3]}")
    starts = [_start_layer(model, r) for r in restorations]
    tokens = fact.tokens.to(model.device)
    n_layers = model.cfg.n_layers
    with torch.no_grad():
        names = sorted({name for r in restorations for name in r})
        clean = model.run_with_cache(tokens[None], names=names)[1] if names else {}
        with model.hooks({"embed": _hook_adding(noise, fact.subject_positions)}):
            noised_logits, noised = model.run_with_cache(
                tokens.repeat(n_samples, 1), resid_names(sorted(set(starts) - {n_layers})))
        out = torch.empty(len(restorations))
        unrestored = [i for i, layer in enumerate(starts) if layer == n_layers]
        out[unrestored] = float(noised_logits[:, -1].float().softmax(-1)[:, fact.attribute_token].mean())
        restored = [i for i, layer in enumerate(starts) if layer < n_layers]
        sweep = VariantSweep(model, tokens.repeat(n_samples, 1), noised, max_rows=max_rows)

        def forward(stack: Stack) -> torch.Tensor:
            hooks = _restoring_hooks([restorations[i] for i in stack.variants], clean, n_samples)
            return sweep.run(stack, hooks, logits_at=torch.full((len(stack) * n_samples, 1), n_tokens - 1))

        def readout(logits: torch.Tensor, stack: Stack) -> torch.Tensor:
            return logits[:, 0].float().softmax(-1)[:, fact.attribute_token]

        probs = sweep.evaluate(restored, start_of=lambda i: starts[i], forward=forward, readout=readout)
        out[restored] = probs.mean(1)
    return out


def _restoring_hooks(chunk: Sequence[Restoration], clean: Mapping[str, torch.Tensor], n_samples: int
                     ) -> dict[str, HookFn]:
    """One hook per activation name writing the clean values of every restoration in ``chunk``
    into its block of ``n_samples`` rows."""
    hooks = {}
    for name in sorted({name for r in chunk for name in r}):
        rows, positions = [], []
        for i, restoration in enumerate(chunk):
            for pos in restoration.get(name, ()):
                rows += range(i * n_samples, (i + 1) * n_samples)
                positions += [pos] * n_samples
        positions_t = torch.tensor(positions, dtype=torch.long)
        values = clean[name][0, positions_t.to(clean[name].device)]
        hooks[name] = _hook_restoring(torch.tensor(rows, dtype=torch.long), positions_t, values)
    return hooks


def window_layers(layer: int, n_layers: int, window: int) -> range:
    """The layers restored together for a window cell at ``layer`` (ROME's centred window, clipped)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - window // 2 + window))


def causal_trace(model: HookedModel, fact: FactPrompt, kinds: Sequence[str] = ("resid", "mlp", "attn"), *,
                 n_samples: int = 10, noise_factor: float = 3.0, noise_std: float | None = None, window: int = 10,
                 seed: int = 0, max_rows: int = 256) -> CausalTrace:
    """Trace ``fact`` (a `FactPrompt`, e.g. from `fact_prompts`): restore each (layer, token)
    of each kind into the subject-noised run (see the module docstring).

    kinds: what is restored: the words "resid", "mlp", "attn" (``blocks.*.resid_post``,
    ``.mlp.out``, ``.attn.out``) or patterns naming a `[b, p, d]` activation of every block
    (``"blocks.*.mlp.out"``, ``"blocks.*.resid_mid"``); ``scores`` is keyed by them as given.
    n_samples noise draws (seeded by ``seed``, shared by all cells) of std ``noise_factor *
    noise_std`` (see `trace_noise`); window: layers restored together for all but residual kinds;
    max_rows: rows per forward. Runs ``len(kinds) * n_layers * (tokens from the first subject
    token on) * n_samples`` rows, each from the first block its cell restores.
    """
    suffixes = {kind: _trace_suffix(model, kind) for kind in ([kinds] if isinstance(kinds, str) else kinds)}
    if not suffixes:
        raise SelectionError(f"kinds must name at least one activation, e.g. {list(KINDS)}")
    if window < 1:
        raise SelectionError(f"window must be at least 1, got {window}")
    fact = _check_fact(model, fact)
    if noise_std is None:
        noise_std = embedding_std(model, fact.tokens)
    noise = trace_noise(model, fact, n_samples=n_samples, noise_factor=noise_factor, noise_std=noise_std, seed=seed)
    n_layers, n_tokens = model.cfg.n_layers, len(fact.tokens)
    first = int(fact.subject_positions.min())
    cells = [(kind, layer, pos) for kind in suffixes for layer in range(n_layers) for pos in range(first, n_tokens)]
    restorations: list[Restoration] = [{}]
    for kind, layer, pos in cells:
        windowed = not suffixes[kind].startswith("resid")
        span = window_layers(layer, n_layers, window) if windowed else range(layer, layer + 1)
        restorations.append({f"blocks.{l}.{suffixes[kind]}": [pos] for l in span})
    probs = restored_probs(model, fact, restorations, noise, max_rows=max_rows)
    corrupted = float(probs[0])
    scores = {kind: torch.full((n_layers, n_tokens), corrupted) for kind in suffixes}
    for (kind, layer, pos), prob in zip(cells, probs[1:].tolist()):
        scores[kind][layer, pos] = prob
    with torch.no_grad():
        clean_logits = model(fact.tokens[None], logits_at=torch.tensor([[n_tokens - 1]]))[0, 0]
    clean = float(clean_logits.float().softmax(-1)[fact.attribute_token])
    return CausalTrace(
        str_tokens=_str_tokens(model, fact.tokens), subject_positions=fact.subject_positions.tolist(),
        attribute=_str_tokens(model, torch.tensor([fact.attribute_token]))[0], attribute_token=fact.attribute_token,
        clean_prob=clean, corrupted_prob=corrupted, scores=scores, window=window, n_samples=n_samples,
        noise_std=noise_factor * noise_std,
    )


def _trace_suffix(model: HookedModel, kind: str) -> str:
    """The block activation a trace kind restores: a word of `KINDS` or a pattern over every block."""
    if kind in KINDS:
        return KINDS[kind]
    if not isinstance(kind, str) or not kind.startswith("blocks."):
        raise SelectionError(f"trace kinds are {list(KINDS)} or block activation patterns such as "
                             f"'blocks.*.mlp.out', got {kind!r}")
    points = model.hook_points(kind)  # unknown names: the close-match error
    if {p.layer for p in points} != set(range(model.cfg.n_layers)) or len({p.suffix for p in points}) != 1:
        raise SelectionError(f"{kind!r} must match one activation of every block, e.g. 'blocks.*.{points[0].suffix}'")
    if points[0].layout != "bpd":
        raise SelectionError(f"causal tracing restores [batch, pos, d] activations; {kind!r} has layout "
                             f"{points[0].layout!r}")
    return points[0].suffix


def _str_tokens(model: HookedModel, tokens: torch.Tensor) -> list[str]:
    """Each token decoded on its own, or their ids as text for a model without tokenizer."""
    ids = tokens.tolist()
    return token_texts(model.tokenizer, ids) if model.tokenizer is not None else [str(t) for t in ids]


def _describe(value: object) -> str:
    """A value's type, and its dtype and shape for a tensor (for error messages)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
