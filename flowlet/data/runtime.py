"""Run-time set-up that every loop shares: seeds, the ``torchrun`` process group, the device and autocast.

The generator's trainer and sampler and the brain-age trainer all start the same way; this is the one copy, on the
floor that every part may import.

``torchrun --nproc_per_node N`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables; a plain
``python`` launch has none of them and runs as a single process (rank 0 of 1) without a process group. NCCL is used
on GPUs, gloo on CPU.

Example:
    >>> from flowlet.data.runtime import autocast_context, init_distributed, seed_everything
    >>> seed_everything(0)
    >>> run = init_distributed("cpu")
    >>> (run.rank, run.world_size, run.device.type)
    (0, 1, 'cpu')
    >>> with autocast_context(run.device, "bf16"):  # CUDA only by default: a no-op here
    ...     pass
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "AUTOCAST_DTYPES",
    "DistContext",
    "autocast_context",
    "autocast_dtype",
    "init_distributed",
    "seed_everything",
    "select_device",
]

logger = logging.getLogger(__name__)

#: Names accepted for an autocast precision; ``None`` (or ``"fp32"``) means no autocast.
AUTOCAST_DTYPES: dict[str | None, torch.dtype | None] = {
    None: None,
    "fp32": None,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask cuDNN for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (third-party code may still use the global generator)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 writes every file).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the device this process runs on.
        initialized: a process group exists (created by :func:`init_distributed` or before it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` → ``cuda:<local_rank>`` when CUDA is available, else CPU; other names are used as given
    (a bare ``"cuda"`` becomes ``cuda:<local_rank>``)."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={value!r}; expected an integer") from exc


def init_distributed(device: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group if the environment describes one (or one already exists).

    Args:
        device: ``auto``, ``cpu``, ``cuda`` ... (CUDA processes use the GPU of their local rank).

    Returns:
        :class:`DistContext`; a single process without a group is rank 0 of 1.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = select_device(device, local_rank)
    if world_size == 1 and not dist.is_initialized():
        return DistContext(rank=0, world_size=1, local_rank=0, device=dev, initialized=False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=_env_int("RANK", 0), world_size=world_size)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    logger.info("process %d/%d joined the %s process group on %s", rank, world_size, dist.get_backend(), dev)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, initialized=True)


def autocast_dtype(precision: str | bool | torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype a precision setting asks for: a name of :data:`AUTOCAST_DTYPES`, a dtype, ``True``
    (bf16) or ``False``/``None`` (none).

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if isinstance(precision, torch.dtype) or precision is None:
        return precision
    if isinstance(precision, bool):
        return torch.bfloat16 if precision else None
    if precision not in AUTOCAST_DTYPES:
        known = [k for k in AUTOCAST_DTYPES if k is not None]
        raise ValueError(f"unknown autocast precision {precision!r}; choose from {known} or None")
    return AUTOCAST_DTYPES[precision]


def autocast_context(
    device: torch.device | str,
    precision: str | bool | torch.dtype | None,
    *,
    cuda_only: bool = True,
) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` on ``device``, or a no-op context.

    Args:
        device: where the network runs.
        precision: see :func:`autocast_dtype` (``None``/``False``: no autocast).
        cuda_only: ignore the precision on other devices (sampling and brain-age keep CPU work exact); the
            generator's trainer passes ``False`` so that ``training.precision: bf16`` also applies on CPU.
    """
    device = torch.device(device)
    dtype = autocast_dtype(precision)
    if dtype is None or (cuda_only and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
