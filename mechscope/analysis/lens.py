"""The logit lens: read the residual stream at every layer through the model's own unembedding.

Each residual-stream point (``blocks.0.resid_pre``, then every ``resid_post``; with
``sublayers`` also every ``resid_mid``) goes through the model's final norm, unembedding
and final softcap (`HookedModel.unembed`), exactly as the last layer's output does. So the
last row reproduces the model's distribution (KL 0), unlike lenses built on
``output_hidden_states``, whose last entry is already normalised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import InitVar, dataclass, field

import numpy as np
import pandas as pd
import torch

from ..errors import SelectionError
from ..models.hooked import HookedModel, TokensLike
from ..models.tokens import token_texts, visible
from ..result import Result
from ..viz import figures

Target = int | str | torch.Tensor | None


@dataclass
class LensResult(Result):
    """Per (layer, prompt, position) lens readings.

    labels: the residual-stream names read, in order (``L`` of them).
    top_ids, top_logprobs: `[L, batch, pos, k]`.
    kl_to_final: `[L, batch, pos]`, KL(final distribution || lens distribution) in nats.
    target_ids: `[batch, pos]` (-1 where there is no target) or None.
    target_logprob, target_rank: `[L, batch, pos]` (rank 0 = top) or None.
    str_tokens: the input tokens as text per prompt, each decoded on its own (when a tokenizer
      is known; `mechscope.models.tokens.token_texts`).
    token_strings: id -> text of the top-1 and target tokens (filled from ``decode``, a callable
      id -> str given at construction and not kept, so the result holds no model).
    Tables and plots show tokens as labels, whitespace made visible (``" Paris"`` as ``·Paris``,
    `mechscope.models.tokens.visible`); the fields keep the text.

    Protocol (`mechscope.result`): ``to_dataframe()`` has a row per (layer, prompt, position);
    ``top(n, **selection)`` ranks by the target's log-prob (or, without a target, KL to the
    final distribution); ``plot(prompt=0)`` draws layers x positions, the top token in each cell.
    Fields a lens run did not compute may be None.
    """

    labels: list[str]
    top_ids: torch.Tensor | None
    top_logprobs: torch.Tensor | None
    kl_to_final: torch.Tensor | None
    target_ids: torch.Tensor | None
    target_logprob: torch.Tensor | None
    target_rank: torch.Tensor | None
    str_tokens: list[list[str]] | None = None
    decode: InitVar[object] = None
    token_strings: dict[int, str] = field(default_factory=dict)

    _signed = False

    def __post_init__(self, decode) -> None:
        if decode is None or self.token_strings:
            return
        ids: set[int] = set()
        if self.top_ids is not None:
            ids.update(torch.unique(self.top_ids[..., 0]).tolist())
        if self.target_ids is not None:
            ids.update(torch.unique(self.target_ids[self.target_ids >= 0]).tolist())
        self.token_strings = {i: decode(i) for i in sorted(ids)}

    @property
    def _value(self) -> str:  # type: ignore[override]
        for name in ("target_logprob", "kl_to_final", "top_logprob", "target_rank"):
            if getattr(self, name if name != "top_logprob" else "top_logprobs") is not None:
                return name
        return "kl_to_final"

    def _shape(self) -> tuple[int, int, int]:
        for values in (self.kl_to_final, self.target_logprob, self.top_logprobs, self.target_rank):
            if values is not None:
                return tuple(values.shape[:3])  # type: ignore[return-value]
        raise SelectionError("this lens result holds no readings")

    @property
    def stats(self) -> tuple[str, ...]:
        """The readings this result holds (``logit_lens(..., stats=...)`` computes only those asked)."""
        return tuple(name for name in STATS if getattr(self, name) is not None)

    def summary(self) -> str:
        n_layers, batch, pos = self._shape()
        return f"logit lens: {n_layers} residual points x {batch} prompts x {pos} positions"

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (layer, prompt, position): ``layer`` (the residual point's name),
        ``depth`` (its index in ``labels``), prompt, pos, token, the top token and its log-prob,
        KL to the final distribution, and the target's log-prob and rank (tokens as labels,
        whitespace made visible)."""
        shape = self._shape()
        index = np.indices(shape).reshape(3, -1)
        data: dict[str, object] = {"layer": np.asarray(self.labels, dtype=object)[index[0]], "depth": index[0],
                                   "prompt": index[1], "pos": index[2]}
        if self.str_tokens:
            data["token"] = [visible(self.str_tokens[b][p]) for b, p in zip(index[1], index[2])]

        def flat(values: torch.Tensor) -> np.ndarray:
            return values.detach().cpu().reshape(-1).numpy()

        if self.top_ids is not None:
            ids = flat(self.top_ids[..., 0]).astype(np.int64)
            data["top_id"] = ids
            data["top_token"] = ([visible(self.token_strings.get(int(i), str(int(i)))) for i in ids]
                                 if self.token_strings else ids)
            data["top_logprob"] = flat(self.top_logprobs[..., 0].float()).astype(float)
        if self.kl_to_final is not None:
            data["kl_to_final"] = flat(self.kl_to_final.float()).astype(float)
        if self.target_logprob is not None:
            data["target_logprob"] = flat(self.target_logprob.float()).astype(float)
        if self.target_rank is not None:
            data["target_rank"] = flat(self.target_rank).astype(np.int64)
        return pd.DataFrame(data)

    def _plot_defaults(self, selection: dict) -> dict:
        return {} if "prompt" in selection else {"prompt": 0}

    def plot(self, value: str | None = None, **selection):
        """Heatmap of ``value`` (``target_logprob`` by default, or ``kl_to_final``,
        ``top_logprob``, ``target_rank``), residual points as rows and positions as columns, for
        one prompt (``prompt=0`` unless given); each cell shows the lens's top token. The colour
        scale spans the 2nd-98th percentiles (position 0 and the embeddings are outliers)."""
        frame = self.plot_data(value, **selection)
        column = self.plot_column(value)
        prompts = frame["prompt"].unique()
        if len(prompts) != 1:
            raise SelectionError(f"a lens plot shows one prompt; the selection has {len(prompts)}")
        z = frame.pivot(index="depth", columns="pos", values=column)
        cols = [f"{p}:{frame.loc[frame.pos == p, 'token'].iloc[0]}" if "token" in frame else str(p) for p in z.columns]
        rows = [self.labels[d] for d in z.index]
        text = frame.pivot(index="depth", columns="pos", values="top_token").to_numpy(object) if "top_token" in frame else None
        hover = {}
        for extra in ("top_logprob", "kl_to_final", "target_logprob", "target_rank"):
            if extra in frame and extra != column:
                hover[extra] = np.round(frame.pivot(index="depth", columns="pos", values=extra).to_numpy(float), 4)
        names = {"target_logprob": "log p(target)", "kl_to_final": "KL(final || lens), nats",
                 "top_logprob": "log p(top token)", "target_rank": "rank of target"}
        return figures.heatmap(z.to_numpy(float), cols, rows, title=f"Logit lens, prompt {int(prompts[0])}: "
                               f"{names.get(column, column)}; cells: top token", text=text, hover=hover,
                               x_label="position", y_label="residual point", z_label=names.get(column, column),
                               robust=True)


# Which readings a lens run computes. "top" is top_ids + top_logprobs (one top-k), "target" the
# two target readings; top-k and KL need the full distribution at every position, the target
# readings only at positions that have a target.
STATS = ("top_ids", "top_logprobs", "kl_to_final", "target_logprob", "target_rank")
_GROUPS = {"top": ("top_ids", "top_logprobs"), "target": ("target_logprob", "target_rank"), "all": STATS}
_TARGET_STATS = {"target_logprob", "target_rank"}
# Lens logits unembedded at once: at most 32 MiB of fp32 per chunk (unless one position's
# points alone are more). Small chunks stay in the last-level cache between the matrix
# multiply and the log-softmax, and the allocator reuses their memory instead of mapping
# fresh pages for each (measured on the bundled model: 1.4x faster than 128 MiB chunks).
_CHUNK_BYTES = 1 << 25


def _positions_per_chunk(vocab: int, depth: int) -> int:
    return max(1, _CHUNK_BYTES // (4 * vocab * depth))


def _wanted(stats: str | Iterable[str] | None, has_target: bool) -> frozenset[str]:
    """The readings to compute (field names of `LensResult`)."""
    if stats is None:
        stats = ("all",)
    elif isinstance(stats, str):
        stats = (stats,)
    wanted: set[str] = set()
    for stat in stats:
        if stat in _GROUPS:
            wanted.update(s for s in _GROUPS[stat] if has_target or stat != "all" or s not in _TARGET_STATS)
        elif stat in STATS:
            wanted.add(stat)
        else:
            raise SelectionError(f"unknown lens stat {stat!r}; choose from {', '.join(STATS + tuple(_GROUPS))}")
    if not wanted:
        raise SelectionError("stats names no reading to compute")
    if wanted & _TARGET_STATS and not has_target:
        raise SelectionError(f"{' and '.join(sorted(wanted & _TARGET_STATS))} need a target= (a token id, ids or 'next')")
    if wanted & {"top_ids", "top_logprobs"}:
        wanted.update(("top_ids", "top_logprobs"))  # one top-k gives both
    return frozenset(wanted)


def _targets(target: Target, tokens: torch.Tensor, mask: torch.Tensor | None = None,
             d_vocab: int | None = None) -> torch.Tensor | None:
    """Target ids `[batch, pos]`, -1 where undefined: after the last position for ``"next"``, and
    at padded positions (``mask`` 0; for ``"next"`` also where the next position is padded)."""
    batch, pos = tokens.shape
    if target is None:
        return None
    if isinstance(target, str):
        if target != "next":
            raise SelectionError(f"target must be a token id, a tensor or 'next', got {target!r}")
        out = torch.full_like(tokens, -1)
        out[:, :-1] = tokens[:, 1:]
        if mask is not None:
            out[:, :-1] = torch.where(mask[:, 1:].bool(), out[:, :-1], -1)
    else:
        target = torch.as_tensor(target, dtype=torch.long, device=tokens.device)
        if target.ndim == 0:
            out = target.expand(batch, pos).clone()
        elif target.ndim == 1 and target.shape[0] == batch:
            out = target[:, None].expand(batch, pos).clone()
        elif target.shape == (batch, pos):
            out = target.clone()
        else:
            raise SelectionError(
                f"target of shape {tuple(target.shape)} fits neither [batch] nor [batch, pos] = {(batch, pos)}")
        if out.numel() and (int(out.min()) < -1 or (d_vocab is not None and int(out.max()) >= d_vocab)):
            raise SelectionError(f"target ids must lie in [0, {d_vocab}) (or be -1 for no target), "
                                 f"got {int(out.min())}..{int(out.max())}")
    if mask is not None:
        out = torch.where(mask.bool(), out, -1)
    return out


def _projector(model: HookedModel, probe_resid: torch.Tensor, probe_logits: torch.Tensor,
               rows_hint: int = 128) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn(resid [rows, d_model]) -> fp32 logits [rows, d_vocab]``, equal to ``model.unembed``.

    On CPU in fp32 the unembedding runs as oneDNN's matrix multiply on the normalised rows,
    which is faster than the default BLAS where that one is not tuned for the processor (about
    1.5x on AMD EPYC, where MKL takes a generic code path). It is used only when it reproduces
    the model's own logits on the probe rows (the final residual point, the rows with the
    largest logits, where a final softcap or any other extra step would show); otherwise, and
    on other devices and dtypes, the rows go through ``model.unembed``. rows_hint: the usual
    number of rows per call, for which oneDNN lays out the weight once.
    """
    def exact(rows: torch.Tensor) -> torch.Tensor:
        return model.unembed(rows).float()

    weight = model.W_U
    if (weight.device.type != "cpu" or weight.dtype != torch.float32 or not torch.backends.mkldnn.is_available()
            or not torch.backends.mkldnn.enabled or probe_resid.shape[0] == 0):
        return exact
    weight = weight.detach().T.contiguous()  # [d_vocab, d_model], usually the module's own storage
    bias = model.b_U.detach()
    bias = bias.float().contiguous() if bool(bias.any()) else None
    try:  # oneDNN's own layout of the weight, made once: about 10% faster multiplies
        weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)
    except (RuntimeError, AttributeError, NotImplementedError):
        pass

    @torch.no_grad()
    def fast(rows: torch.Tensor) -> torch.Tensor:
        normed = model.final_norm(rows).float().contiguous()
        return torch.ops.mkldnn._linear_pointwise(normed, weight, bias, "none", [], "")

    try:
        got = fast(probe_resid)
    except (RuntimeError, AttributeError, NotImplementedError):
        return exact
    want = probe_logits.float()
    scale = max(1.0, float(want.abs().max()))
    if got.shape == want.shape and float((got - want).abs().max()) <= 1e-5 * scale:
        return fast
    return exact


def _read(project: Callable[[torch.Tensor], torch.Tensor], resid: torch.Tensor, final: torch.Tensor,
          targets: torch.Tensor | None, wanted: frozenset[str], k: int) -> dict[str, torch.Tensor]:
    """The lens readings at ``n`` positions: each `[n, depth + 1, ...]`.

    resid: `[n, depth, d_model]`, the residual points before the last; final: `[n, d_vocab]`,
    the model's logits (the last point's lens distribution exactly); targets: `[n]`, -1 for none.
    Positions are processed in small chunks, every point of a chunk through one matrix multiply
    whose output becomes the log-probs in place (a reused buffer off the CPU); only the requested
    readings are taken from them.
    """
    n, depth, _ = resid.shape
    vocab = final.shape[-1]
    per = _positions_per_chunk(vocab, depth)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    if n == 0:  # no position has a target
        return {name: torch.empty((0, depth + 1), dtype=torch.long if name == "target_rank" else torch.float32,
                                  device=final.device) for name in wanted}
    lp_buf = gt_buf = None
    for start in range(0, n, per):
        rows = slice(start, start + per)
        m = resid[rows].shape[0]
        final_lp = torch.log_softmax(final[rows].float(), dim=-1)[:, None]  # [m, 1, vocab]
        logits = project(resid[rows].reshape(m * depth, -1))
        if logits.device.type == "cpu":  # in place: the CPU kernel reads each row before writing it
            lp = torch.log_softmax(logits, dim=-1, out=logits)
        else:
            if lp_buf is None:  # the first chunk is the largest
                lp_buf = torch.empty_like(logits)
            lp = torch.log_softmax(logits, dim=-1, out=lp_buf[: m * depth])
        lp = lp.view(m, depth, vocab)
        del logits
        if "top_ids" in wanted:
            top = [lp.topk(k, dim=-1), final_lp.topk(k, dim=-1)]
            parts["top_ids"].append(torch.cat([t.indices for t in top], 1))
            parts["top_logprobs"].append(torch.cat([t.values for t in top], 1))
        if wanted & _TARGET_STATS:
            has = targets[rows] >= 0
            index = targets[rows].clamp(min=0)[:, None, None]
            value = lp.gather(-1, index.expand(m, depth, 1))  # [m, depth, 1]
            final_value = final_lp.gather(-1, index)  # [m, 1, 1]
            if "target_logprob" in wanted:
                got = torch.cat([value, final_value], 1)[..., 0]
                parts["target_logprob"].append(torch.where(has[:, None], got, torch.nan))
            if "target_rank" in wanted:
                if gt_buf is None:
                    gt_buf = torch.empty(lp.shape, dtype=torch.bool, device=lp.device)
                above = torch.gt(lp, value, out=gt_buf[:m])
                rank = torch.cat([above.sum(-1, dtype=torch.int32), (final_lp > final_value).sum(-1, dtype=torch.int32)], 1)
                parts["target_rank"].append(torch.where(has[:, None], rank.long(), -1))
        if "kl_to_final" in wanted:  # last: it overwrites the log-probs
            final_p = final_lp.exp()  # [m, 1, vocab]
            neg_entropy = (final_p * final_lp).sum(-1)  # [m, 1]; a summed product is more exact than vecdot
            kl = neg_entropy - lp.mul_(final_p).sum(-1)  # KL(final || lens) = E_final[lp_final - lp]
            parts["kl_to_final"].append(torch.cat([kl, torch.zeros_like(neg_entropy)], 1))
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def logit_lens(model: HookedModel, tokens: TokensLike, *, target: Target = None, k: int = 5,
               sublayers: bool = False, attention_mask: torch.Tensor | None = None,
               stats: str | Iterable[str] | None = None) -> LensResult:
    """Logit lens over every layer and position.

    target: a token id (all positions), LongTensor `[batch]` or `[batch, pos]`, or
      ``"next"`` (each position's next input token); no target at padded positions.
    k: how many top tokens to keep.
    sublayers: also read ``resid_mid`` (after attention, before the MLP).
    stats: the readings to compute, by field name (``"top_ids"``/``"top_logprobs"``, which come
      together, ``"kl_to_final"``, ``"target_logprob"``, ``"target_rank"``) or group (``"top"``,
      ``"target"``, ``"all"``); default every reading that applies. Those not asked for are
      None on the result (``result.stats`` lists those computed). Asking only for target
      readings skips the full-vocabulary top-k, ranks and KL and reads only the positions that
      have a target: the fast way to get log-probs of answers or of the next token.
    """
    input_ids, mask = model.prepare_inputs(tokens, attention_mask)
    targets = _targets(target, input_ids, mask, model.cfg.d_vocab)
    wanted = _wanted(stats, targets is not None)
    if "top_ids" in wanted and not 1 <= k <= model.cfg.d_vocab:
        raise SelectionError(f"k must be between 1 and d_vocab = {model.cfg.d_vocab}, got {k}")
    names = ["blocks.0.resid_pre"]
    for layer in range(model.cfg.n_layers):
        if sublayers and f"blocks.{layer}.resid_mid" in model.names:
            names.append(f"blocks.{layer}.resid_mid")
        names.append(f"blocks.{layer}.resid_post")
    logits, cache = model.run_with_cache(input_ids, names, attention_mask=mask)
    batch, pos = input_ids.shape
    with torch.no_grad():
        final = logits.reshape(batch * pos, -1)
        resid = torch.stack([cache[name] for name in names[:-1]], dim=2).reshape(batch * pos, len(names) - 1, -1)
        flat_targets = None if targets is None else targets.reshape(-1)
        only_targets = wanted <= _TARGET_STATS
        rows = (flat_targets >= 0).nonzero()[:, 0] if only_targets else None
        probe = torch.maximum(final.amax(-1), -final.amin(-1)).topk(min(8, batch * pos)).indices
        project = _projector(model, cache[names[-1]].reshape(batch * pos, -1)[probe], final[probe],
                             _positions_per_chunk(final.shape[-1], len(names) - 1) * (len(names) - 1))
        if rows is None:
            readings = _read(project, resid, final, flat_targets, wanted, k)
        else:
            readings = _read(project, resid[rows], final[rows], flat_targets[rows], wanted, k)
        del cache, resid

        def layout(values: torch.Tensor) -> torch.Tensor:
            """[rows, L, ...] -> [L, batch, pos, ...], no-target defaults at rows not read."""
            if rows is not None:
                full = torch.full((batch * pos, *values.shape[1:]), torch.nan if values.is_floating_point() else -1,
                                  dtype=values.dtype, device=values.device)
                full[rows] = values
                values = full
            values = values.reshape(batch, pos, *values.shape[1:])
            return values.movedim(2, 0).contiguous()

        readings = {name: layout(values) for name, values in readings.items()}
    str_tokens = None
    decode = None
    if model.tokenizer is not None:
        str_tokens = [token_texts(model.tokenizer, row.tolist()) for row in input_ids]
        decode = lambda i: token_texts(model.tokenizer, [i])[0]
    return LensResult(
        labels=names,
        top_ids=readings.get("top_ids"),
        top_logprobs=readings.get("top_logprobs"),
        kl_to_final=readings.get("kl_to_final"),
        target_ids=targets,
        target_logprob=readings.get("target_logprob"),
        target_rank=readings.get("target_rank"),
        str_tokens=str_tokens,
        decode=decode,
    )
