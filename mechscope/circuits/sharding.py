"""Prompts in chunks and across ranks: circuit scores and faithfulness metrics are sums (or
per-prompt values) over prompts, so under ``torchrun`` each rank takes a contiguous share of
the prompts (`mechscope.distributed.shard`), and the sums are all-reduced and the per-prompt
values gathered in rank order (the single-process order). In one process these are the
identity. Gloo on CPU, NCCL on GPUs: the tensors reduced live on the model's device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..data.tasks import PromptPairs
from ..distributed import all_reduce_, gather_uneven, shard
from ..errors import SelectionError
from .graph import Graph
from .interventions import source_activations


def subset(pairs: PromptPairs, rows: slice) -> PromptPairs:
    """The prompts ``rows`` of ``pairs`` (answers, answer positions and ``prompt_index`` with
    them, so a metric reading per-prompt data of a task, e.g. greater-than's years, still finds
    each row's prompt)."""
    return PromptPairs(pairs.clean[rows], pairs.corrupted[rows], pairs.answers[rows], pairs.wrong[rows],
                       pairs.answer_positions[rows], prompt_index=pairs.prompt_index[rows])


def chunk_rows(n: int, batch_size: int | None) -> list[slice]:
    """The rows of consecutive chunks of at most ``batch_size`` of ``n`` prompts."""
    size = n if batch_size is None else batch_size
    if size < 1:
        raise SelectionError(f"batch_size must be at least 1, got {batch_size}")
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def chunks(pairs: PromptPairs, batch_size: int | None) -> Iterator[PromptPairs]:
    """``pairs`` cut into consecutive chunks of at most ``batch_size`` prompts."""
    for rows in chunk_rows(len(pairs), batch_size):
        yield subset(pairs, rows)


def local_pairs(pairs: PromptPairs) -> PromptPairs:
    """This rank's contiguous share of ``pairs`` (all of them in a single process)."""
    rows = shard(len(pairs))
    return pairs if rows == slice(0, len(pairs)) else subset(pairs, rows)


def summed(*values: torch.Tensor) -> None:
    """All-reduce (sum) each tensor in place over the ranks."""
    for value in values:
        all_reduce_(value)


def gathered(per_prompt: torch.Tensor) -> torch.Tensor:
    """Per-prompt values `[..., n_local]` of every rank, joined in prompt order: `[..., n]`."""
    return gather_uneven(per_prompt, dim=-1)


def mean_sources(model, graph: Graph, pairs: PromptPairs, batch_size: int | None, n_total: int) -> torch.Tensor:
    """Mean source outputs per position over every rank's corrupted prompts: `[1, pos, n_src, d]`
    (``pairs``: this rank's share; ``n_total``: the prompts over all ranks)."""
    total = None
    for chunk in chunks(pairs, batch_size):
        _, acts = source_activations(model, graph, chunk.corrupted)
        part = acts.sum(0, keepdim=True)
        total = part if total is None else total + part
    summed(total)
    return total / n_total
