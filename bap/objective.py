"""What a brain-age run optimises and how: the loss, the optimiser and the learning-rate schedule.

Each is chosen by name from a small table whose keys are the names ``bap.config`` accepts (``train.loss``,
``train.optimizer``, ``train.schedule``); an unknown name raises ``ValueError`` naming the config field and the
choices, so no name ever falls through to a default.

Example:
    >>> from bap.config import TrainConfig
    >>> from bap.models import build_model
    >>> model = build_model("small", age_mean=50.0, age_std=10.0, age_range=[20, 80], options={"channels": [4]})
    >>> objective = AgeObjective(model, "l1")
    >>> opt = build_optimizer(TrainConfig(), objective.parameters())
    >>> type(build_scheduler(TrainConfig(schedule="constant"), opt)).__name__
    'LambdaLR'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from bap.config import TrainConfig

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULES",
    "AgeObjective",
    "build_optimizer",
    "build_scheduler",
    "choose",
    "get_loss",
    "step_scheduler",
]

#: ``loss(model, x, age, weight) -> (loss, pred)``: a scalar loss and ``(B,)`` predicted ages.
LossFn = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]
]


def choose(table: dict[str, Any], name: str, field: str) -> Any:
    """``table[name]``, or ``ValueError("unknown train.x 'y'; choose from [...]")`` naming the config field."""
    if name not in table:
        raise ValueError(f"unknown {field} {name!r}; choose from {sorted(table)}")
    return table[name]


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum(w * v) / sum(w)`` over the batch: a rare scan weighs more than a common one, but the loss (and the
    gradient) stays on the scale of an unweighted mean however large the weights of the sparsest bins are."""
    return torch.sum(weight * values) / torch.clamp(torch.sum(weight), min=1e-12)


def _l1(
    model: nn.Module, x: torch.Tensor, age: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute error in years on the regression output."""
    pred = model(x).float()
    error = torch.abs(pred - age)
    return (torch.mean(error) if weight is None else _weighted_mean(error, weight)), pred


def _sfcn_kl(
    model: nn.Module, x: torch.Tensor, age: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL divergence to the soft age label (SFCN, Peng et al. 2021); the prediction is the expected age."""
    log_probs = model.log_probs(x)
    if weight is None:
        loss = model.kl_loss(log_probs, age)
    else:
        loss = _weighted_mean(model.kl_loss(log_probs, age, per_scan=True), weight)
    return loss, model.expected_age(log_probs)


#: ``train.loss`` → loss function.
LOSSES: dict[str, LossFn] = {"l1": _l1, "sfcn_kl": _sfcn_kl}


def get_loss(name: str) -> LossFn:
    """The loss function registered as ``name`` (``ValueError`` naming ``train.loss`` if there is none)."""
    return choose(LOSSES, name, "train.loss")


class AgeObjective(nn.Module):
    """Model + loss in one module, so that DDP sees one forward per step.

    ``forward(x, age, weight=None)`` returns ``(loss, pred)`` with ``loss`` a scalar and ``pred`` ``(B,)`` ages.
    ``weight`` ``(B,)`` weights each scan's loss in a weighted batch mean (per-age-bin loss weights).
    """

    def __init__(self, model: nn.Module, loss: str) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self._loss_fn = get_loss(loss)

    def forward(
        self, x: torch.Tensor, age: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._loss_fn(self.model, x, age, weight)


#: ``train.optimizer`` → ``(train config, parameters) -> optimiser``.
OPTIMIZERS: dict[str, Callable[[TrainConfig, Iterable[Any]], torch.optim.Optimizer]] = {
    "adamw": lambda t, params: torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay),
    "sgd": lambda t, params: torch.optim.SGD(
        params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
    ),
}


def build_optimizer(t: TrainConfig, params: Iterable[Any]) -> torch.optim.Optimizer:
    """The optimiser ``t.optimizer`` names, with ``t``'s learning rate, weight decay and momentum."""
    return choose(OPTIMIZERS, t.optimizer, "train.optimizer")(t, params)


def _constant(_epoch: int) -> float:
    return 1.0


#: ``train.schedule`` → ``(train config, optimiser) -> per-epoch scheduler``.
SCHEDULES: dict[str, Callable[[TrainConfig, torch.optim.Optimizer], Any]] = {
    "cosine": lambda t, opt: torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=t.epochs, eta_min=t.eta_min
    ),
    "cosine_restarts": lambda t, opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=t.t_0, T_mult=t.t_mult, eta_min=t.eta_min
    ),
    # divide by 10 after plateau_patience epochs without a smoothed validation MAE better by min_delta
    "plateau": lambda t, opt: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt,
        factor=0.1,
        patience=t.plateau_patience,
        threshold=t.min_delta,
        threshold_mode="abs",
        min_lr=t.eta_min,
    ),
    "constant": lambda _t, opt: torch.optim.lr_scheduler.LambdaLR(opt, _constant),
}


def build_scheduler(t: TrainConfig, opt: torch.optim.Optimizer) -> Any:
    """The learning-rate schedule ``t.schedule`` names, stepped once per epoch by :func:`step_scheduler`."""
    return choose(SCHEDULES, t.schedule, "train.schedule")(t, opt)


def step_scheduler(scheduler: Any, score: float) -> None:
    """End-of-epoch step; a plateau schedule steps on ``score`` (the smoothed validation MAE)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(score)
    else:
        scheduler.step()
