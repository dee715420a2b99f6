"""Exponential moving average of network weights (kept in checkpoints; sampling uses it by default)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Shadow copy ``θ_ema ← d·θ_ema + (1 − d)·θ`` of a module's floating-point parameters and buffers.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that early
    averages are not dominated by the random initialisation (a short run still gets useful EMA weights).

    Args:
        model: the network being trained (its current weights initialise the shadow).
        decay: target decay in ``[0, 1)``.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> ema = EMA(net, decay=0.9)
        >>> ema.update(net)
        >>> ema.num_updates
        1
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.num_updates = 0

    def current_decay(self) -> float:
        """Decay used by the next :meth:`update`."""
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow weights towards ``model``'s (same architecture, unwrapped)."""
        d = self.current_decay()
        shadow = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = shadow[name]
            if target.dtype.is_floating_point:
                target.lerp_(value.detach().to(target.dtype), 1.0 - d)
            else:
                target.copy_(value)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """Shadow weights plus the update counter (plain tensors and ints)."""
        return {"weights": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.module.load_state_dict(state["weights"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
