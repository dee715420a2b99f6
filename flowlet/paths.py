"""Probability paths between noise (``t = 0``) and data (``t = 1``), and the time samplers used to train on them.

Every path here is *affine*: ``x_t = alpha_t * x_1 + sigma_t * x_0`` with scalar schedules of ``t``, so one
:meth:`AffinePath.sample` serves all of them and the regression target is the exact time derivative
``dx_t = d_alpha_t * x_1 + d_sigma_t * x_0``. Paths know nothing about networks or solvers.

Time direction follows the official FlowLet code for all paths: ``t = 0`` is noise, ``t = 1`` is data.

Example:
    >>> import torch
    >>> path = get_path("rectified")
    >>> x_0, x_1 = torch.randn(2, 8, 4, 4, 4), torch.randn(2, 8, 4, 4, 4)
    >>> s = path.sample(x_0, x_1, torch.tensor([0.25, 0.5]))
    >>> s.x_t.shape
    torch.Size([2, 8, 4, 4, 4])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "PATHS",
    "TIME_SAMPLERS",
    "AffinePath",
    "LogitNormalTimeSampler",
    "PathCoefficients",
    "PathSample",
    "RectifiedPath",
    "StratifiedTimeSampler",
    "TrigonometricPath",
    "UniformTimeSampler",
    "VPPath",
    "get_path",
    "get_time_sampler",
]


@dataclass
class PathSample:
    """One draw from a probability path.

    Attributes:
        x_0: noise, ``(B, ...)``.
        x_1: data, ``(B, ...)``.
        t: times, ``(B,)``.
        x_t: point on the path, ``(B, ...)``.
        dx_t: velocity ``d x_t / dt`` at ``t`` (the flow-matching regression target), ``(B, ...)``.
    """

    x_0: Tensor
    x_1: Tensor
    t: Tensor
    x_t: Tensor
    dx_t: Tensor


@dataclass
class PathCoefficients:
    """Schedules of an affine path at times ``t``, each shaped like ``t``."""

    alpha_t: Tensor
    sigma_t: Tensor
    d_alpha_t: Tensor
    d_sigma_t: Tensor


def _expand(t: Tensor, like: Tensor) -> Tensor:
    """Reshape ``t`` of shape ``(B,)`` to ``(B, 1, ..., 1)`` so it broadcasts against ``like``."""
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must have shape (B,) = ({like.shape[0]},), got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.ndim - 1)))


class AffinePath:
    """Base class: ``x_t = alpha_t x_1 + sigma_t x_0``. Subclasses implement :meth:`coefficients`."""

    name: str = "affine"

    def coefficients(self, t: Tensor) -> PathCoefficients:
        """Return ``alpha_t, sigma_t`` and their time derivatives at ``t``."""
        raise NotImplementedError

    def sample(self, x_0: Tensor, x_1: Tensor, t: Tensor) -> PathSample:
        """Point and velocity on the path.

        Args:
            x_0: noise ``(B, ...)``.
            x_1: data ``(B, ...)``, same shape as ``x_0``.
            t: ``(B,)`` times in ``[0, 1]``.

        Returns:
            :class:`PathSample` with ``x_t`` and ``dx_t`` shaped like ``x_0``.
        """
        if x_0.shape != x_1.shape:
            raise ValueError(
                f"x_0 and x_1 must have the same shape, got {tuple(x_0.shape)} and {tuple(x_1.shape)}"
            )
        c = self.coefficients(t.to(x_0.dtype))
        a, s, da, ds = (_expand(v, x_0) for v in (c.alpha_t, c.sigma_t, c.d_alpha_t, c.d_sigma_t))
        return PathSample(x_0=x_0, x_1=x_1, t=t, x_t=a * x_1 + s * x_0, dx_t=da * x_1 + ds * x_0)

    def velocity_to_x1(self, v: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Data estimate implied by a velocity: solve ``x_t = a x_1 + s x_0``, ``v = a' x_1 + s' x_0`` for ``x_1``.

        Args:
            v: velocity ``(B, ...)``; x_t: state ``(B, ...)``; t: ``(B,)``.

        Returns:
            ``x_1`` estimate, ``(B, ...)``. Undefined where the 2x2 system is singular.
        """
        c = self.coefficients(t.to(x_t.dtype))
        a, s, da, ds = (_expand(u, x_t) for u in (c.alpha_t, c.sigma_t, c.d_alpha_t, c.d_sigma_t))
        return (s * v - ds * x_t) / (s * da - ds * a)

    def velocity_to_x0(self, v: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Noise estimate implied by a velocity (the companion of :meth:`velocity_to_x1`)."""
        c = self.coefficients(t.to(x_t.dtype))
        a, s, da, ds = (_expand(u, x_t) for u in (c.alpha_t, c.sigma_t, c.d_alpha_t, c.d_sigma_t))
        return (da * x_t - a * v) / (s * da - ds * a)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RectifiedPath(AffinePath):
    """Straight line ``x_t = (1 - t) x_0 + t x_1``, ``dx_t = x_1 - x_0`` (official ``rectified``).

    Also registered as ``cfm``: the official ``cfm`` target ``(x_1 - x_t) / (1 - t + 1e-8)`` on the path
    ``t x_1 + (1 - t) z`` equals ``x_1 - z`` algebraically (spec §3, §11.4); only the floating-point error near
    ``t -> 1`` differs, so the two names train the same model and one implementation serves both.
    """

    name = "rectified"

    def coefficients(self, t: Tensor) -> PathCoefficients:
        one = torch.ones_like(t)
        return PathCoefficients(alpha_t=t, sigma_t=1.0 - t, d_alpha_t=one, d_sigma_t=-one)


class TrigonometricPath(AffinePath):
    """``x_t = cos(pi t / 2) x_0 + sin(pi t / 2) x_1``, ``dx_t = (pi/2)(-sin(.) x_0 + cos(.) x_1)`` (official)."""

    name = "trigonometric"

    def coefficients(self, t: Tensor) -> PathCoefficients:
        h = 0.5 * math.pi
        return PathCoefficients(
            alpha_t=torch.sin(h * t),
            sigma_t=torch.cos(h * t),
            d_alpha_t=h * torch.cos(h * t),
            d_sigma_t=-h * torch.sin(h * t),
        )


class VPPath(AffinePath):
    """Variance-preserving path of the official ``vp_diffusion`` flow, with ``s = 1 - t``:

    ``T(s) = beta_min s + s^2 (beta_max - beta_min) / 2``, ``beta(s) = T'(s)``, ``alpha(s) = exp(-T(s) / 2)``,
    ``x_t = alpha(s) x_1 + sqrt(1 - alpha(s)^2) x_0``.

    :meth:`sample` returns the exact velocity ``dx_t = (beta/2)(alpha x_1 - alpha^2 / sigma x_0)``. The official
    target ``-(beta/2)(e^{-T} x_t - e^{-T/2} x_1) / (1 - e^{-T} + 1e-8)`` is the same expression with ``sigma^2``
    replaced by ``sigma^2 + 1e-8`` in the denominator (see :meth:`official_target`); the two differ by a relative
    ``1e-8 / sigma^2``, i.e. only for ``t`` within about ``1e-6`` of 1. Both diverge as ``t -> 1`` (``sigma -> 0``),
    which is why the official VP training draws ``t`` with :class:`StratifiedTimeSampler` (``t < 1 - 1e-5``).

    At ``t = 0``, ``alpha(1) = exp(-(beta_min + (beta_max - beta_min) / 2) / 2)`` (0.0066 for the defaults), so
    ``x_0`` is reached only up to that factor; ``x_1`` is reached exactly at ``t = 1``.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0.0 <= beta_min <= beta_max:
            raise ValueError(
                f"VPPath needs 0 <= beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}"
            )
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def integrated_beta(self, s: Tensor) -> Tensor:
        """``T(s)``, for ``s = 1 - t``."""
        return self.beta_min * s + 0.5 * s**2 * (self.beta_max - self.beta_min)

    def beta(self, s: Tensor) -> Tensor:
        """``beta(s) = dT/ds``."""
        return self.beta_min + s * (self.beta_max - self.beta_min)

    def alpha_at_noise_end(self) -> float:
        """``alpha`` at ``t = 0``: how far the path's start is from pure noise."""
        return math.exp(-0.5 * (self.beta_min + 0.5 * (self.beta_max - self.beta_min)))

    def coefficients(self, t: Tensor) -> PathCoefficients:
        s = 1.0 - t
        big_t = self.integrated_beta(s)
        alpha = torch.exp(-0.5 * big_t)
        sigma = torch.sqrt(-torch.expm1(-big_t))  # 1 - alpha^2 without cancellation near s = 0
        half_beta = 0.5 * self.beta(s)
        # d/dt = -d/ds: alpha' = -(beta/2) alpha and sigma' = (beta/2) alpha^2 / sigma in s.
        return PathCoefficients(
            alpha_t=alpha, sigma_t=sigma, d_alpha_t=half_beta * alpha, d_sigma_t=-half_beta * alpha**2 / sigma
        )

    def official_target(self, x_t: Tensor, x_1: Tensor, t: Tensor) -> Tensor:
        """The official VP regression target, with its ``+1e-8`` (for exact reproduction of official training)."""
        s = _expand(1.0 - t.to(x_t.dtype), x_t)
        big_t = self.integrated_beta(s)
        return (
            -0.5
            * self.beta(s)
            * (torch.exp(-big_t) * x_t - torch.exp(-0.5 * big_t) * x_1)
            / (1.0 - torch.exp(-big_t) + 1e-8)
        )

    def __repr__(self) -> str:
        return f"VPPath(beta_min={self.beta_min}, beta_max={self.beta_max})"


PATHS: dict[str, type[AffinePath]] = {
    "rectified": RectifiedPath,
    "cfm": RectifiedPath,
    "trigonometric": TrigonometricPath,
    "vp": VPPath,
}
_PATH_ALIASES = {"vp_diffusion": "vp"}  # the official --flow_type spelling


def get_path(name: str, **kwargs: float) -> AffinePath:
    """Build a registered path, e.g. ``get_path("vp", beta_min=0.1, beta_max=20)``.

    Raises:
        ValueError: unknown name (the message lists the registered names).
    """
    key = _PATH_ALIASES.get(name, name)
    if key not in PATHS:
        raise ValueError(f"unknown path '{name}'; choose from {sorted(PATHS)}")
    return PATHS[key](**kwargs)


class UniformTimeSampler:
    """``t ~ U(0, 1)`` independently per sample (official, all paths except VP)."""

    name = "uniform"

    def __call__(self, batch_size: int, *, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Return ``(batch_size,)`` float32 times."""
        return torch.rand(batch_size, generator=generator, device=device)


class LogitNormalTimeSampler:
    """``t = sigmoid(n)``, ``n ~ N(mean, std^2)``: concentrates training on intermediate times (SD3-style)."""

    name = "logit_normal"

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if std <= 0:
            raise ValueError(f"logit_normal std must be > 0, got {std}")
        self.mean, self.std = float(mean), float(std)

    def __call__(self, batch_size: int, *, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Return ``(batch_size,)`` float32 times in ``(0, 1)``."""
        n = torch.randn(batch_size, generator=generator, device=device)
        return torch.sigmoid(self.mean + self.std * n)


class StratifiedTimeSampler:
    """Official VP sampler: one ``u ~ U(0,1)`` per batch, ``t_b = ((u + b) / B) mod (1 - 1e-5)``.

    The modulus keeps ``t`` away from 1, where the VP velocity diverges.
    """

    name = "stratified"

    def __init__(self, max_time: float = 1.0 - 1e-5) -> None:
        self.max_time = float(max_time)

    def __call__(self, batch_size: int, *, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Return ``(batch_size,)`` float32 times in ``[0, max_time)``."""
        u = torch.rand(1, generator=generator, device=device)
        b = torch.arange(batch_size, device=u.device, dtype=u.dtype)
        return torch.remainder((u + b) / batch_size, self.max_time)


TIME_SAMPLERS: dict[str, type] = {
    "uniform": UniformTimeSampler,
    "logit_normal": LogitNormalTimeSampler,
    "stratified": StratifiedTimeSampler,
}


def get_time_sampler(name: str, **kwargs: float):
    """Build a registered time sampler; call it as ``sampler(batch_size, generator=g, device=d)``.

    Raises:
        ValueError: unknown name (the message lists the registered names).
    """
    if name not in TIME_SAMPLERS:
        raise ValueError(f"unknown time sampler '{name}'; choose from {sorted(TIME_SAMPLERS)}")
    return TIME_SAMPLERS[name](**kwargs)
