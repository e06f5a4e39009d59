"""``torch.distributed`` helpers for data-parallel training under ``torchrun``; each is a no-op
(or the identity) in a single process, so trainers call them unconditionally.

    world_size(), rank(), is_writer()      # 1, 0, True without a process group
    local_rows(batch)                      # this rank's share of a global batch
    shard(n)                               # this rank's contiguous slice of n items (uneven is fine)
    gather_uneven(x)                       # every rank's rows, in rank order, sizes may differ
    average_gradients(params)              # one all-reduce of a flat buffer, divided by the world size
    barrier()                              # every rank waits for the others
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import distributed as dist

from .errors import SelectionError


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def is_writer() -> bool:
    """Whether this process writes checkpoints and shows progress (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing in a single process): a rank that ends its
    run while rank 0 still writes a checkpoint would otherwise tear the process group down
    under it (gloo aborts with "terminate called without an active exception")."""
    if is_distributed():
        dist.barrier()


def local_rows(batch: torch.Tensor) -> torch.Tensor:
    """This rank's share of a global batch `[b, ...]` under ``torch.distributed`` (rows
    ``rank * b / world`` to ``(rank + 1) * b / world``); the whole batch in a single process."""
    if not is_distributed():
        return batch
    world, index = world_size(), rank()
    if batch.shape[0] % world:
        raise SelectionError(f"the batch size {batch.shape[0]} must divide evenly over {world} ranks")
    share = batch.shape[0] // world
    return batch[index * share : (index + 1) * share]


def shard(n: int) -> slice:
    """This rank's contiguous share ``[rank * n // world, (rank + 1) * n // world)`` of ``n``
    items (the shares differ by at most one; concatenated in rank order they are ``0 .. n-1``).
    ``slice(0, n)`` in a single process; a `SelectionError` if some rank would get nothing."""
    world, index = world_size(), rank()
    if n < world:
        raise SelectionError(f"{n} items cannot be shared over {world} ranks: give at least one per rank")
    return slice(index * n // world, (index + 1) * n // world)


def gather_uneven(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order, where the ranks' sizes
    along ``dim`` may differ (the other dimensions must agree); ``x`` in a single process."""
    if not is_distributed():
        return x
    dim = dim % x.ndim
    sizes = torch.zeros(world_size(), dtype=torch.long)
    sizes[rank()] = x.shape[dim]
    dist.all_reduce(sizes)
    longest = int(sizes.max())
    pad = list(x.shape)
    pad[dim] = longest - x.shape[dim]
    padded = torch.cat([x, x.new_zeros(pad)], dim=dim).contiguous()
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([part.narrow(dim, 0, int(size)) for part, size in zip(parts, sizes)], dim=dim)


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced in place over the ranks (``op``: "sum" or "max"); unchanged in a
    single process. Returns ``tensor``."""
    if is_distributed():
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` `[b, ...]` concatenated in rank order: `[world * b, ...]` (``x``
    itself in a single process)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Replace every parameter's gradient by its mean over the ranks (a missing gradient
    counts as zeros), with one all-reduce of one flat buffer. Nothing in a single process."""
    if not is_distributed():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for param, grad in zip(params, grads):
        param.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
        offset += grad.numel()


def check_same_step(step: int) -> None:
    """Under data parallel every rank must resume from the same step (one checkpoint on a
    filesystem every rank reads); raises `SelectionError` naming the spread otherwise."""
    if not is_distributed():
        return
    steps = torch.tensor([step, -step], dtype=torch.long)
    dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    if int(steps[0]) != step or int(-steps[1]) != step:
        raise SelectionError(f"ranks resumed from different steps ({int(-steps[1])} to {int(steps[0])}): "
                             "data-parallel resume needs the out folder on a filesystem every rank reads")
