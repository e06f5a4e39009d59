"""Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17".

The clean prompt names a start year ``XXYY``; a model that "knows" greater-than puts its
probability on end years ``YY' > YY``. The corruption is the paper's "01": the start year
becomes ``XX01``, so (almost) every end year is later and the prompt no longer tells which
years are excluded. The metric is the paper's probability difference
``sum_{y > YY} P(y) - sum_{y <= YY} P(y)`` over the two-digit end years ``y`` in 00..99.

How the end year is read off depends on how the tokenizer writes numbers:

- two-digit tokenizers (GPT-2 style: every "00".."99" is one token and "1732" is
  ``["17", "32"]``): the prompt is the paper's, ending in ``XX``; the next token is the
  whole two-digit end year and ``P(y)`` is the probability of its token. This is exactly
  the paper's task.
- digit tokenizers (SmolLM2, Llama 2 style: one token per digit): ``YY`` is two tokens, so
  ``P(y)`` is a product ``P(tens) * P(units | tens)``. To get it from one forward pass the
  prompt carries one extra token: the clean start year's tens digit ``Y1`` after ``XX``
  ("... to the year 173"), in the clean and the corrupted prompt alike. The position of
  ``XX``'s last digit predicts the tens digit (all ten outcomes); the appended position
  predicts the units digit given tens digit ``Y1``, the only tens digit whose years fall on
  both sides of ``YY``. With those, ``P(year > YY)`` and ``P(year <= YY)`` are exact (years
  with another tens digit are decided by the tens digit alone), so the metric is the paper's
  metric over two-digit years, but the task is two next-token predictions, and patching
  sweeps also show the appended position.

Probability on tokens that are no end year (a space, a word) counts for neither side, as in
the paper; for digit tokenizers a tens digit other than ``Y1`` decides the side whatever
follows it, while after ``Y1`` only a digit counts.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import SelectionError
from ..models.hooked import HookedModel
from ..models.tokens import single_token, single_token_words
from .tasks import PromptPairs

NOUNS = ("war", "expedition", "project", "campaign", "dynasty", "siege", "journey", "trial", "occupation",
         "investigation", "plague", "reign")  # from the paper's noun list
CENTURIES = tuple(range(11, 18))
YEARS = tuple(range(2, 99))  # YY; 00, 01 and 99 leave no year on one side, as in the paper
TEMPLATE = "The {noun} lasted from the year"

Metric = Callable[[torch.Tensor, PromptPairs], torch.Tensor]


@dataclass
class GreaterThanTask:
    """Greater-than prompts and what the metric needs.

    pairs: the prompts (clean/corrupted `[n, pos]`). ``answer_positions`` `[n]` is where the
      last piece of the end year is predicted: the last position (the whole year for two-digit
      tokenizers, the units digit after the appended tens digit for digit tokenizers).
      ``answers``/``wrong`` `[n]` are the token of the smallest later year and of the start year
      itself at that position: two-digit: ``YY+1`` vs ``YY``; digit: units digit ``Y2+1`` vs
      ``Y2`` (years ending in 9 are skipped there), for metrics such as ``logit_diff``.
    years: `[n]` the start year's ``YY`` (2..98); centuries: `[n]` its ``XX``; nouns: `n` nouns.
    mode: "two_digit" or "digit" (see the module docstring).
    year_tokens: `[100]` token ids of "00".."99" (two_digit) or `[10]` of "0".."9" (digit).
    year_positions: `[k]` positions of the start year's ``YY`` tokens (1 or 2), the only
      positions where clean and corrupted prompts differ.
    """

    pairs: PromptPairs
    years: torch.Tensor
    centuries: torch.Tensor
    nouns: list[str]
    mode: str
    year_tokens: torch.Tensor
    year_positions: torch.Tensor

    def __len__(self) -> int:
        return len(self.pairs)


def _single_tokens(tokenizer, texts: Sequence[str]) -> list[int] | None:
    """The token of each text, or None unless every text is one token of its own (no unknown token)."""
    ids = [single_token(tokenizer, t) for t in texts]
    if None in ids or len(set(ids)) != len(texts):
        return None
    return ids


def _number_mode(tokenizer) -> tuple[str, list[int]]:
    """("two_digit", ids of "00".."99") or ("digit", ids of "0".."9")."""
    two = _single_tokens(tokenizer, [f"{i:02d}" for i in range(100)])
    if two is not None:
        return "two_digit", two
    one = _single_tokens(tokenizer, [str(d) for d in range(10)])
    if one is not None:
        return "digit", one
    raise SelectionError("greater-than needs a tokenizer with a single token for every digit or for every two-digit "
                         "number 00..99; this one has neither")


def _text(noun: str, century: int, start: int, year: int, mode: str) -> str:
    """The prompt with start year ``century|start``; digit mode appends ``year``'s tens digit."""
    tail = str(year // 10) if mode == "digit" else ""
    return f"{TEMPLATE.format(noun=noun)} {century}{start:02d} to the year {century}{tail}"


def _encode(model: HookedModel, text: str) -> list[int]:
    return model.to_tokens(text)[0].tolist()


def _prompt(model: HookedModel, mode: str, year_ids: list[int], noun: str, century: int, year: int
            ) -> tuple[list[int], list[int], int] | None:
    """Token rows ``(clean, corrupted, yy_start)`` for one prompt, or None when the tokenizer
    does not write it as ``... XX | YY | to the year XX`` with YY in its own token(s)."""
    head = TEMPLATE.format(noun=noun)
    before, through_xx = _encode(model, head), _encode(model, f"{head} {century}")
    if through_xx[:len(before)] != before:
        return None
    century_tokens = through_xx[len(before):]
    slot = (lambda yy: [year_ids[yy]]) if mode == "two_digit" else (lambda yy: [year_ids[yy // 10], year_ids[yy % 10]])
    clean = _encode(model, _text(noun, century, year, year, mode))
    corrupted = _encode(model, _text(noun, century, 1, year, mode))
    start, end = len(through_xx), len(through_xx) + len(slot(year))
    ending = century_tokens + ([year_ids[year // 10]] if mode == "digit" else [])
    if (clean[:start] != through_xx or clean[start:end] != slot(year) or clean[-len(ending):] != ending
            or corrupted != clean[:start] + slot(1) + clean[end:]):
        return None
    return clean, corrupted, start


def greater_than(model: HookedModel, n: int, *, seed: int = 0, nouns: Sequence[str] = NOUNS,
                 centuries: Sequence[int] = CENTURIES) -> GreaterThanTask:
    """``n`` greater-than prompts drawn with ``seed`` from ``nouns x centuries x YY in 02..98``.

    Kept only: nouns that are one token (with a leading space), and years whose clean and
    corrupted prompts have the same token length with ``YY`` in its own token(s) right after
    ``XX`` (one two-digit token, or two digit tokens), all prompts one length; for digit
    tokenizers also ``YY`` not ending in 9 (see `GreaterThanTask`). Raises `SelectionError`
    when fewer than ``n`` prompts qualify.
    """
    if n < 1:
        raise SelectionError(f"need at least one prompt, got n={n}")
    if not centuries or any(not 10 <= c <= 99 for c in centuries):
        raise SelectionError(f"centuries must be two-digit numbers (10..99), got {list(centuries)}")
    tok = model.tokenizer
    mode, year_ids = _number_mode(tok)
    usable = single_token_words(tok, nouns)
    years = [y for y in YEARS if mode == "two_digit" or y % 10 != 9]
    candidates = list(itertools.product(usable, centuries, years))
    random.Random(seed).shuffle(candidates)
    rows: list[tuple[str, int, int, list[int], list[int]]] = []
    shape = None  # (length, position of YY) shared by all prompts
    for noun, century, year in candidates:
        built = _prompt(model, mode, year_ids, noun, century, year)
        if built is None or (shape is not None and (len(built[0]), built[2]) != shape):
            continue
        shape = (len(built[0]), built[2])
        rows.append((noun, century, year, built[0], built[1]))
        if len(rows) == n:
            break
    if len(rows) < n:
        raise SelectionError(
            f"only {len(rows)} greater-than prompts qualify for this tokenizer ({mode} numbers; {len(usable)} of "
            f"{len(nouns)} nouns are single tokens), {n} requested"
        )
    nouns_, centuries_, years_, clean, corrupted = zip(*rows)
    if mode == "two_digit":
        answer_ids, wrong_ids = [year_ids[y + 1] for y in years_], [year_ids[y] for y in years_]
    else:
        answer_ids, wrong_ids = [year_ids[y % 10 + 1] for y in years_], [year_ids[y % 10] for y in years_]
    pairs = PromptPairs(
        torch.tensor(clean), torch.tensor(corrupted), torch.tensor(answer_ids), torch.tensor(wrong_ids),
        clean_texts=[_text(w, c, y, y, mode) for w, c, y in zip(nouns_, centuries_, years_)],
        corrupted_texts=[_text(w, c, 1, y, mode) for w, c, y in zip(nouns_, centuries_, years_)],
    )
    start = shape[1]
    return GreaterThanTask(pairs, torch.tensor(years_), torch.tensor(centuries_), list(nouns_), mode,
                           torch.tensor(year_ids), torch.arange(start, start + (1 if mode == "two_digit" else 2)))


def greater_than_prob_diff(task: GreaterThanTask) -> Metric:
    """The paper's metric as a function ``(logits [batch, pos, vocab], pairs) -> [batch]``:
    ``P(end year > YY) - P(end year <= YY)``, end years being the two-digit numbers 00..99.

    ``batch`` is the task's ``n`` prompts, or with ``pairs`` tiled by a sweep (`PromptPairs.tile`)
    ``k * n`` rows whose prompts ``pairs.prompt_index`` gives; per-prompt data comes from ``task``.
    Two-digit tokenizers: ``P(y)`` is the softmax probability of token ``y`` at the last
    position. Digit tokenizers: the tens digit's probabilities come from the position before
    the last, the units digit's (given the start year's tens digit) from the last one.
    """
    n = len(task)

    def metric(logits: torch.Tensor, pairs: PromptPairs | None = None) -> torch.Tensor:
        batch = n if pairs is None else len(pairs)
        if logits.ndim != 3 or logits.shape[0] != batch:
            raise SelectionError(f"logits must be [{batch}, pos, vocab] for {batch} rows of greater-than prompts, "
                                 f"got shape {tuple(logits.shape)}")
        rows = torch.arange(batch, device=logits.device)
        prompt = rows if pairs is None else pairs.prompt_index.to(logits.device)
        years = task.years.to(logits.device)[prompt]
        last = task.pairs.answer_positions.to(logits.device)[prompt]
        tokens = task.year_tokens.to(logits.device)
        probs = logits[rows, last].float().softmax(-1)[:, tokens]  # [batch, 100] or [batch, 10]
        if task.mode == "two_digit":
            later = torch.arange(100, device=logits.device)[None] > years[:, None]
            return torch.where(later, probs, -probs).sum(-1)
        tens = logits[rows, last - 1].float().softmax(-1)[:, tokens]  # [batch, 10]
        digit = torch.arange(10, device=logits.device)[None]
        y1, y2 = (years // 10)[:, None], (years % 10)[:, None]
        same_tens = tens.gather(1, y1)[:, 0]
        decided = torch.where(digit > y1, tens, torch.where(digit < y1, -tens, 0.0)).sum(-1)
        units = torch.where(digit > y2, probs, -probs).sum(-1)
        return decided + same_tens * units

    return metric
