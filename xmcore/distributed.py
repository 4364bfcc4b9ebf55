"""Negatives from every process: an all-gather that keeps gradients.

With data parallelism each process holds B pairs; a contrastive loss over the
local batch alone sees B - 1 negatives.  Gathering every process's embeddings
gives it world_size * B - 1, as one process with the whole batch would.

``_AllGather`` sums the gathered tensors' gradients back to their owners (an
all-reduce of the incoming gradient, then each process keeps its own rows).  Every process computes the same global loss, so
each local embedding receives world_size times its gradient; DDP then averages
the parameter gradients over the processes -- and the result equals one process
with the whole batch exactly (open_clip's ``gather_with_grad``; tested in
tests/test_distributed.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process (rank order), differentiably; ``x`` itself when alone."""
    if world_size() == 1:
        return x
    return _AllGather.apply(x)


class _AllGather(torch.autograd.Function):
    """All-gather whose backward hands each process the summed gradient of its own rows.

    Written out rather than ``torch.distributed.nn.functional.all_gather`` (deprecated
    in torch 2.14): with gloo, the latter's backward left work in flight that made a
    process abort at exit ("terminate called without an active exception") in about
    one run out of three.  Both collectives here are synchronous.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        sizes = _sizes(x.shape[0], x.device)
        ctx.start = sum(sizes[: dist.get_rank()])
        ctx.rows = x.shape[0]
        return _gather(x.detach(), sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.rows]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process (no gradient: ids, labels); sizes may differ."""
    if world_size() == 1:
        return x
    return _gather(x, _sizes(x.shape[0], x.device))


def _sizes(rows: int, device: torch.device) -> list[int]:
    mine = torch.tensor([rows], dtype=torch.long, device=device)  # NCCL takes CUDA tensors only
    every = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(every, mine)
    return [int(n) for n in every]


def _gather(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """all_gather needs equal shapes: pad every part to the largest, then trim."""
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)
