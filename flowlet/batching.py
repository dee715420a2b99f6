"""A memory-bounded batch size for sampling: probe the network's peak memory on the device and fit the batch to it."""

from __future__ import annotations

import logging

import torch

from flowlet.sampling import SamplingConfig, latent_shape, model_velocity

__all__ = ["CPU_BATCH_SIZE", "auto_batch_size", "batch_from_probe"]

logger = logging.getLogger(__name__)


#: Batch size of :func:`auto_batch_size` off CUDA: on CPUs batch 2 already reaches the oneDNN kernels, and larger
#: batches only add memory (``docs/benchmarks.md`` §3).
CPU_BATCH_SIZE = 4


def batch_from_probe(
    peak_1: int, peak_2: int, free: int, *, memory_fraction: float = 0.8, max_batch: int = 32
) -> int:
    """Largest batch whose estimated peak fits ``memory_fraction`` of ``free`` bytes.

    The peak is taken as linear in the batch, ``fixed + b · per_sample``, from the peaks of batch 1 and 2
    (bytes above what was allocated before each probe).

    Example:
        >>> batch_from_probe(3 * 2**30, 4 * 2**30, 40 * 2**30)  # 2 GiB fixed + 1 GiB per sample
        30
    """
    per_sample = max(peak_2 - peak_1, 1)
    fixed = max(peak_1 - per_sample, 0)
    fits = int((free * memory_fraction - fixed) // per_sample)
    return max(1, min(max_batch, fits))


def auto_batch_size(
    bundle, config: SamplingConfig, *, memory_fraction: float = 0.8, max_batch: int = 32
) -> int:
    """A memory-bounded batch size for sampling ``bundle`` with ``config`` (its ``batch_size`` is ignored).

    On CUDA, one network evaluation (with guidance and autocast as configured) is run at batch 1 and 2 on random
    inputs; the peak memory of each gives the per-sample cost, and the batch is the largest that fits
    ``memory_fraction`` of the free device memory, capped at ``max_batch``. Elsewhere :data:`CPU_BATCH_SIZE`.
    """
    device = torch.device(config.device)
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    velocity = model_velocity(bundle, config)
    shape = latent_shape(bundle)
    names = list(getattr(bundle.model_config, "condition_names", ()))

    def peak(batch: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        x = torch.randn(batch, *shape, device=device)
        t = torch.full((batch,), 0.5, device=device)
        cond = {name: torch.full((batch, 1), 0.5, device=device) for name in names} or None
        with torch.no_grad():
            velocity(x, t, cond)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    p1, p2 = peak(1), peak(2)
    free, _total = torch.cuda.mem_get_info(device)
    batch = batch_from_probe(p1, p2, free, memory_fraction=memory_fraction, max_batch=max_batch)
    logger.info(
        "automatic batch size %d (%.2f GiB per sample, %.1f GiB free)", batch, (p2 - p1) / 2**30, free / 2**30
    )
    return batch
