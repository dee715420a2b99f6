"""Pieces of a training step that do not need the :class:`~flowlet.training.trainer.Trainer`.

Seeds per step, the learning-rate schedule, condition dropout for classifier-free guidance, the fixed-noise
validation loss, and small runtime helpers.
"""

from __future__ import annotations

import math
import resource
import signal
import threading
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from flowlet.data import keys
from flowlet.data.runtime import DistContext
from flowlet.models.config import UNetConfig
from flowlet.training import distributed as dist_utils
from flowlet.training.loss import per_sample_band_loss

__all__ = [
    "ConditionDropout",
    "cosine_schedule",
    "default_model_factory",
    "fixed_validation_loss",
    "interrupt_on_sigterm",
    "peak_memory_mb",
    "step_seed",
]

_GOLDEN = 0.6180339887498949


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for ``(run seed, step, stream)``; the same on every process."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(2, dtype=np.uint64)[0] >> 1)


def cosine_schedule(step: int, *, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Learning rate at ``step``: linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class ConditionDropout(nn.Module):
    """Runs the network with the conditions of the samples in ``drop`` removed (classifier-free guidance training).

    Dropped samples go through the network with ``conditions=None`` (the zero condition vector, which is also
    the unconditional branch at sampling); the rest keep theirs. Both groups run in one forward call so that
    data-parallel training sees a single forward per step.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: Tensor, t: Tensor, conditions: dict[str, Tensor], drop: Tensor | None = None
    ) -> Tensor:
        if drop is None or not bool(drop.any()):
            return self.model(x, t, conditions)
        if bool(drop.all()):
            return self.model(x, t, None)
        keep = ~drop
        v_keep = self.model(x[keep], t[keep], {k: v[keep] for k, v in conditions.items()})
        v_drop = self.model(x[drop], t[drop], None)
        out = v_keep.new_empty((x.shape[0], *v_keep.shape[1:]))
        out[keep] = v_keep
        out[drop] = v_drop
        return out


def interrupt_on_sigterm():
    """Turn SIGTERM into KeyboardInterrupt so that a killed run saves its state; returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


def default_model_factory(config: UNetConfig) -> nn.Module:
    from flowlet.models.unet import ConditionalUNet

    return ConditionalUNet(config)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA allocator peak on GPUs, the process's maximum resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def validation_draw(k: int, shape: tuple[int, ...], seed: int) -> tuple[Tensor, float]:
    """Noise and time of validation draw ``k``: noise seeded by ``(seed, k)``, ``t_k = frac(0.5 + k·φ)``."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(step_seed(seed, k, 7)))
    return noise, (0.5 + k * _GOLDEN) % 1.0


@torch.no_grad()
def fixed_validation_loss(
    net: nn.Module,
    dataset,
    path,
    *,
    repeats: int,
    seed: int,
    batch_size: int,
    device: torch.device,
    autocast: Callable,
    weights: tuple[float, float],
    dist: DistContext,
) -> dict[str, float] | None:
    """Validation loss with fixed noise and times: the same weights always give the same value.

    Draw ``k = i·R + r`` (scan ``i``, repeat ``r < R``) uses :func:`validation_draw`; the golden-ratio times
    spread evenly over [0, 1] whatever the number of draws. Processes take every ``world_size``-th draw and the
    sums are all-reduced.

    Returns:
        ``{"val_loss", "val_loss_lll", "val_loss_detail"}`` (means over all draws), or None for an empty set.
    """
    if len(dataset) == 0:
        return None
    was_training = net.training
    net.eval()
    totals = torch.zeros(4, dtype=torch.float64)
    draws = [(i, r) for i in range(len(dataset)) for r in range(repeats)][dist.rank :: dist.world_size]
    for start in range(0, len(draws), batch_size):
        chunk = draws[start : start + batch_size]
        items = [dataset[i] for i, _ in chunk]
        x_1 = torch.stack([it[keys.IMAGE] for it in items]).to(device)
        conditions = {
            k: torch.stack([it["conditions"][k] for it in items]).to(device) for k in items[0]["conditions"]
        }
        noise, times = zip(*(validation_draw(i * repeats + r, tuple(x_1.shape[1:]), seed) for i, r in chunk))
        t = torch.tensor(times, dtype=torch.float32, device=device)
        sample = path.sample(torch.stack(noise).to(device), x_1, t)
        with autocast():
            prediction = net(sample.x_t, t, conditions)
        loss, lll, detail = per_sample_band_loss(
            prediction.float(), sample.dx_t, lll_weight=weights[0], detail_weight=weights[1]
        )
        counts = torch.tensor(float(len(chunk)), device=loss.device)
        totals += torch.stack([loss.sum(), lll.sum(), detail.sum(), counts]).double().cpu()
    net.train(was_training)
    dist_utils.all_reduce_sum(totals, dist)
    mean = (totals[:3] / totals[3]).tolist()
    return {"val_loss": mean[0], "val_loss_lll": mean[1], "val_loss_detail": mean[2]}
