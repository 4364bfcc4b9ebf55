"""Negatives from every process: an all-gather that keeps gradients.

With data parallelism each process holds B pairs; a contrastive loss over the
local batch alone sees B - 1 negatives.  Gathering every process's embeddings
gives it world_size * B - 1, as one process with the whole batch would.

``torch.distributed.nn.functional.all_gather`` sums the gathered tensors'
gradients back to their owners.  Every process computes the same global loss, so
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
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process (no gradient: ids, labels)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
