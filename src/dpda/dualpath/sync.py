"""Gradient synchronisation across ranks for the dual-path engine.

The engine does not use ``DistributedDataParallel``: DDP all-reduces one gradient set during the
backward pass, while dual-path training needs both path gradients summed over all ranks before
they are compared. Here each set is all-reduced in flat buckets (a few calls, not one per
tensor), with one bucket in flight while the next is packed.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.distributed as dist
from torch import Tensor, nn


def is_distributed(group: dist.ProcessGroup | None = None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def all_reduce_sum_(
    tensors: list[Tensor], group: dist.ProcessGroup | None = None, bucket_bytes: int = 25 * 2**20
) -> None:
    """Sum every tensor over all ranks in place. Every rank must pass the same shapes in order."""
    pending: deque[tuple[dist.Work, Tensor, list[Tensor]]] = deque()
    for bucket in _buckets(tensors, bucket_bytes):
        flat = torch.cat([t.reshape(-1) for t in bucket])
        work = dist.all_reduce(flat, group=group, async_op=True)
        pending.append((work, flat, bucket))
        if len(pending) > 1:
            _unpack(*pending.popleft())
    while pending:
        _unpack(*pending.popleft())


def broadcast_module_(module: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Copy rank 0's parameters and buffers to every rank (so all ranks start identical)."""
    source = dist.get_global_rank(group, 0) if group is not None else 0
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=source, group=group)


def _buckets(tensors: list[Tensor], bucket_bytes: int) -> list[list[Tensor]]:
    buckets: list[list[Tensor]] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        same_kind = buckets and buckets[-1][0].dtype == t.dtype and buckets[-1][0].device == t.device
        if not same_kind or size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(t)
        size += nbytes
    return buckets


def _unpack(work: dist.Work, flat: Tensor, bucket: list[Tensor]) -> None:
    work.wait()
    for t, chunk in zip(bucket, flat.split([t.numel() for t in bucket])):
        t.copy_(chunk.view_as(t))
