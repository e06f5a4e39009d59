"""Metrics of logits for patching experiments. Every metric maps logits `[batch, pos, vocab]`
(plus the task's answers) to one value per prompt `[batch]`; users write their own alike, and
`checked_metric` holds a user's metric to that contract wherever a method calls it."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch

from ..data.tasks import PromptPairs
from ..errors import MetricError, SelectionError
from ..models.functional import kl_divergence
from ..models.runtime import call_user, check_signature

METRIC_CONTRACT = "metric(logits [batch, pos, vocab], pairs) -> tensor [batch]"


def checked_metric(metric: Callable[[torch.Tensor, PromptPairs], torch.Tensor]
                   ) -> Callable[[torch.Tensor, PromptPairs], torch.Tensor]:
    """``metric`` with its contract checked: its signature now (`SignatureError` if it cannot
    take ``(logits, pairs)``), and every value it returns (`checked_metric_value`). Keeps the
    metric's attributes (`reads_answer_only`); checking a checked metric returns it as is."""
    if getattr(metric, "checks_contract", False):
        return metric
    check_signature(metric, 2, "the metric", METRIC_CONTRACT)

    @functools.wraps(metric)
    def checked(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
        value = call_user(metric, (logits, pairs), "the metric", METRIC_CONTRACT)
        return checked_metric_value(value, logits.shape[0])

    checked.checks_contract = True
    return checked


def checked_metric_value(value: object, batch: int, what: str = "the metric") -> torch.Tensor:
    """``value`` if it is one real value per prompt, a tensor `[batch]` (any real dtype; the
    methods read it in float32); otherwise a `MetricError` stating the contract."""
    if not isinstance(value, torch.Tensor):
        raise MetricError(f"{what} returned {type(value).__name__}, expected a tensor of shape ({batch},): one "
                          f"value per prompt ({METRIC_CONTRACT})")
    if value.shape != (batch,):
        hint = " (return one value per prompt, not their mean or sum)" if value.ndim == 0 else ""
        raise MetricError(f"{what} returned shape {tuple(value.shape)}, expected ({batch},): one value per "
                          f"prompt ({METRIC_CONTRACT}){hint}")
    if value.is_complex():
        raise MetricError(f"{what} returned dtype {value.dtype}, expected real values ({METRIC_CONTRACT})")
    return value


def reads_answer_only(metric):
    """Declare that ``metric`` reads logits only at ``pairs.answer_positions``; sweeps run with
    ``answer_logits_only=True`` then compute the unembedding there alone and pass logits
    `[batch, 1, vocab]` with the answer positions set to 0. The built-in metrics declare it."""
    metric.reads_answer_only = True
    return metric


def answer_logits_view(metric, pairs: PromptPairs) -> tuple[torch.Tensor | None, PromptPairs]:
    """``(logits_at, pairs for the metric)``: for a metric that `reads_answer_only`, the answer
    positions `[n, 1]` to unembed at and a copy of ``pairs`` whose answer positions are 0 (the
    logits then are `[n, 1, vocab]`); ``(None, pairs)`` for any other metric."""
    if not getattr(metric, "reads_answer_only", False):
        return None, pairs
    view = dataclasses.replace(pairs, answer_positions=torch.zeros_like(pairs.answer_positions))
    return pairs.answer_positions[:, None], view


def _last(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
    """Logits at each prompt's answer position: `[batch, vocab]`."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, pairs.answer_positions.to(logits.device)]


@reads_answer_only
def logit_diff(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
    """logit(answer) - logit(wrong answer) at the answer position, `[batch]`."""
    last = _last(logits, pairs)
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, pairs.answers.to(last.device)] - last[rows, pairs.wrong.to(last.device)]


@reads_answer_only
def prob_diff(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
    probs = _last(logits, pairs).float().softmax(-1)
    rows = torch.arange(probs.shape[0], device=probs.device)
    return probs[rows, pairs.answers.to(probs.device)] - probs[rows, pairs.wrong.to(probs.device)]


@reads_answer_only
def answer_logprob(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
    logprobs = _last(logits, pairs).float().log_softmax(-1)
    return logprobs[torch.arange(logprobs.shape[0], device=logprobs.device), pairs.answers.to(logprobs.device)]


def kl_to(reference_logits: torch.Tensor, pairs: PromptPairs):
    """A metric: KL(reference || patched) at the answer positions, `[batch]`.

    reference_logits `[n, pos, vocab]` for the ``n`` prompts of ``pairs`` (read at their answer
    positions once, here); a batch of tiled pairs (variants stacked by a sweep, `PromptPairs.tile`)
    or of a chunk of them compares each row with its prompt, found by ``pairs.prompt_index``.
    """
    reference = _last(reference_logits, pairs).float().log_softmax(-1)  # [n, vocab]
    known = pairs.prompt_index.cpu()
    row_of = torch.full((int(known.max()) + 1,), -1, dtype=torch.long)
    row_of[known] = torch.arange(len(known))

    @reads_answer_only
    def metric(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
        index = pairs.prompt_index.cpu()
        rows = row_of[index.clamp(max=len(row_of) - 1)]
        if bool((index >= len(row_of)).any()) or bool((rows < 0).any()):
            raise SelectionError("kl_to: these rows' prompts are not among the reference's prompts")
        ref = reference[rows.to(reference.device)]
        new = _last(logits, pairs).float().log_softmax(-1).to(ref.device)
        return kl_divergence(ref, new)

    return metric


def normalized(value: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """(value - corrupted) / (clean - corrupted): 0 = corrupted behaviour, 1 = clean."""
    return (value - corrupted) / (clean - corrupted)
