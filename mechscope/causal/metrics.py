"""Metrics of logits for patching experiments. Every metric maps logits `[batch, pos, vocab]`
(plus the task's answers) to one value per prompt `[batch]`; users write their own alike."""

from __future__ import annotations

import torch

from ..data.tasks import PromptPairs


def _last(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
    """Logits at each prompt's answer position: `[batch, vocab]`."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, pairs.answer_positions.to(logits.device)]


def logit_diff(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
    """logit(answer) - logit(wrong answer) at the answer position, `[batch]`."""
    last = _last(logits, pairs)
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, pairs.answers.to(last.device)] - last[rows, pairs.wrong.to(last.device)]


def prob_diff(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
    probs = _last(logits, pairs).float().softmax(-1)
    rows = torch.arange(probs.shape[0], device=probs.device)
    return probs[rows, pairs.answers.to(probs.device)] - probs[rows, pairs.wrong.to(probs.device)]


def answer_logprob(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
    logprobs = _last(logits, pairs).float().log_softmax(-1)
    return logprobs[torch.arange(logprobs.shape[0], device=logprobs.device), pairs.answers.to(logprobs.device)]


def kl_to(reference_logits: torch.Tensor):
    """A metric: KL(reference || patched) at the answer positions, `[batch]`."""

    def metric(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
        ref = _last(reference_logits, pairs).float().log_softmax(-1)
        new = _last(logits, pairs).float().log_softmax(-1)
        return (ref.exp() * (ref - new)).sum(-1)

    return metric


def normalized(value: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """(value - corrupted) / (clean - corrupted): 0 = corrupted behaviour, 1 = clean."""
    return (value - corrupted) / (clean - corrupted)
