"""The network as an ODE velocity field: conditioning flags, classifier-free guidance and mixed precision.

This is the only place outside the network that knows what a condition is; solvers just pass
``conditions=...`` through to :class:`ModelVelocity`.

Classifier-free guidance: ``v = v_uncond + s (v_cond - v_uncond)`` where the unconditional branch is the network
with ``conditions=None`` (the zero condition vector of the official code). ``s = 1`` is plain conditional
sampling and costs one network call; any other ``s`` costs two. A model trained without condition dropout (all
official checkpoints) never saw the zero vector in training, so guidance with such a model is off-distribution.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ABLATIONS", "Ablation", "ModelVelocity", "get_ablation"]


@dataclass(frozen=True)
class Ablation:
    """Which conditioning mechanisms of the network are active.

    Attributes:
        name: registry name.
        film: condition FiLM in the ResBlocks.
        cross_attention: cross-attention to the condition context.
        suffix: folder/file tag used by the official ``generate_linear`` layout.
    """

    name: str
    film: bool
    cross_attention: bool
    suffix: str


ABLATIONS: dict[str, Ablation] = {
    "baseline": Ablation("baseline", film=True, cross_attention=True, suffix="Baseline"),
    # Unlike the official code (spec §11.1), switching cross-attention off keeps FiLM on here.
    "film_only": Ablation("film_only", film=True, cross_attention=False, suffix="FiLM_Only"),
    "crossattn_only": Ablation("crossattn_only", film=False, cross_attention=True, suffix="CrossAttn_Only"),
    # Both mechanisms off: the age never reaches the network (the official "unconditional" mode).
    "unconditional": Ablation("unconditional", film=False, cross_attention=False, suffix="Unconditional"),
}


def get_ablation(name: str) -> Ablation:
    """Return a registered ablation.

    Raises:
        ValueError: unknown name (the message lists the registered names).
    """
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation '{name}'; choose from {sorted(ABLATIONS)}")
    return ABLATIONS[name]


class ModelVelocity:
    """Wrap a ``ConditionalUNet``-like network as ``velocity(x, t, conditions=None) -> Tensor``.

    Args:
        model: callable as ``model(x, t, conditions, film=..., cross_attention=...)``.
        ablation: conditioning mechanisms to keep.
        guidance_scale: classifier-free guidance scale ``s``; 1 disables guidance.
        autocast_dtype: ``torch.bfloat16`` / ``torch.float16`` to run the network under CUDA autocast; ignored
            (with the state kept exact) on other devices. The returned velocity always has the state's dtype.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        ablation: Ablation | str = "baseline",
        guidance_scale: float = 1.0,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.ablation = get_ablation(ablation) if isinstance(ablation, str) else ablation
        self.guidance_scale = float(guidance_scale)
        self.autocast_dtype = autocast_dtype
        self.nfe = 0

    def _autocast(self, x: Tensor):
        if self.autocast_dtype is None or x.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype)

    def _call(self, x: Tensor, t: Tensor, conditions: Mapping[str, Tensor] | None) -> Tensor:
        self.nfe += 1
        with self._autocast(x):
            v = self.model(
                x, t, conditions, film=self.ablation.film, cross_attention=self.ablation.cross_attention
            )
        return v.to(x.dtype)

    def __call__(self, x: Tensor, t: Tensor, conditions: Mapping[str, Tensor] | None = None) -> Tensor:
        """Velocity ``(B, 8, d, h, w)`` at state ``x`` ``(B, 8, d, h, w)`` and times ``t`` ``(B,)``."""
        v_cond = self._call(x, t, conditions)
        if self.guidance_scale == 1.0:
            return v_cond
        v_uncond = self._call(x, t, None)
        return v_uncond + self.guidance_scale * (v_cond - v_uncond)
