"""Metrics of logits for patching experiments. Every metric maps logits `[batch, pos, vocab]`
(plus the task's answers) to one value per prompt `[batch]`; users write their own alike."""

from __future__ import annotations

import torch

from ..data.tasks import PromptPairs
from ..models.functional import kl_divergence


def reads_answer_only(metric):
    """Declare that ``metric`` reads logits only at ``pairs.answer_positions``; sweeps run with
    ``answer_logits_only=True`` then compute the unembedding there alone and pass logits
    `[batch, 1, vocab]` with the answer positions set to 0. The built-in metrics declare it."""
    metric.reads_answer_only = True
    return metric


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
    compares each row with its prompt, ``pairs.prompt_index``.
    """
    reference = _last(reference_logits, pairs).float().log_softmax(-1)  # [n, vocab]

    @reads_answer_only
    def metric(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
        ref = reference[pairs.prompt_index.to(reference.device)]
        new = _last(logits, pairs).float().log_softmax(-1).to(ref.device)
        return kl_divergence(ref, new)

    return metric


def normalized(value: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """(value - corrupted) / (clean - corrupted): 0 = corrupted behaviour, 1 = clean."""
    return (value - corrupted) / (clean - corrupted)
