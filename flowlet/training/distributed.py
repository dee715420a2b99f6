"""Process-group helpers for data-parallel training launched with ``torchrun``.

``torchrun --nproc_per_node N`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables; a
plain ``python`` launch has none of them and runs as a single process (rank 0 of 1) without a process group.
NCCL is used on GPUs, gloo on CPU. Joining the group and choosing the device are
:mod:`flowlet.data.runtime`'s (one copy for every trainer); the collective helpers below are the generator's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from flowlet.data.runtime import DistContext, init_distributed

__all__ = [
    "all_reduce_sum",
    "barrier",
    "init_distributed",
    "shutdown_distributed",
]


def all_reduce_sum(tensor: torch.Tensor, info: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (no-op for a single process) and return it."""
    if info.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistContext) -> None:
    """Wait for every process (no-op for a single process)."""
    if info.world_size > 1:
        dist.barrier()


def shutdown_distributed(info: DistContext) -> None:
    """Destroy the process group created by :func:`init_distributed`."""
    if info.initialized and dist.is_initialized():
        dist.destroy_process_group()
