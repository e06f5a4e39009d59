"""Small functions of logits that every method computes the same way."""

from __future__ import annotations

import torch


def kl_divergence(reference_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """KL(reference || other) over the last axis: `[..., vocab]` log-probabilities -> `[...]`."""
    return (reference_logprobs.exp() * (reference_logprobs - logprobs)).sum(-1)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ``tokens[:, 1:]`` from ``logits[:, :-1]``: logits
    `[batch, pos, vocab]`, tokens `[batch, pos]` -> a scalar."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def next_token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each next token in float32: logits `[batch, pos, vocab]`, tokens
    `[batch, pos]` -> `[batch, pos - 1]`."""
    logprobs = logits[:, :-1].float().log_softmax(-1)
    return -logprobs.gather(-1, tokens[:, 1:, None].to(logprobs.device))[..., 0]
