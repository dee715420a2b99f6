"""Fixed-grid ODE solvers for ``dx/dt = velocity(x, t)`` from ``t = 0`` (noise) to ``t = 1`` (data).

A solver knows nothing about networks or conditioning: it calls ``velocity(x, t_batch, **model_kwargs)`` with
``t_batch`` of shape ``(B,)`` in the state's dtype, and passes ``model_kwargs`` through untouched.

The ``euler`` solver reproduces the official FlowLet sampler exactly: on ``uniform_grid(N)`` each step computes
``dt`` as a Python double, evaluates the velocity at ``t_i`` (cast to the state's dtype, float32 for the official
state) and updates ``x = x + dt * v`` (the same two roundings as the official code).

Example:
    >>> import torch
    >>> result = get_solver("heun").solve(lambda x, t: -x, torch.ones(2, 3), uniform_grid(10))
    >>> result.nfe
    20
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SOLVERS",
    "TIME_GRIDS",
    "EulerSolver",
    "HeunSolver",
    "MidpointSolver",
    "ODESolver",
    "RK4Solver",
    "SolveResult",
    "cosine_grid",
    "get_solver",
    "get_time_grid",
    "shifted_grid",
    "uniform_grid",
]

Velocity = Callable[..., Tensor]


@dataclass
class SolveResult:
    """Output of :meth:`ODESolver.solve`.

    Attributes:
        x: final state ``(B, ...)``.
        trajectory: ``(len(time_grid), B, ...)`` states on the grid (on the CPU), or ``None`` when not requested.
        nfe: number of velocity evaluations.
    """

    x: Tensor
    trajectory: Tensor | None
    nfe: int


def uniform_grid(num_steps: int) -> Tensor:
    """``num_steps + 1`` float64 points ``t_i = i * (1 / num_steps)`` (the official Euler times)."""
    _check_steps(num_steps)
    return torch.arange(num_steps + 1, dtype=torch.float64) * (1.0 / num_steps)


def shifted_grid(num_steps: int, shift: float = 3.0) -> Tensor:
    """Uniform grid warped by ``t' = t / (t + shift (1 - t))`` (the SD3 shift written with ``t = 0`` at noise).

    ``shift > 1`` puts more steps near the noise end, ``shift < 1`` near the data end; ``shift = 1`` is uniform.
    """
    if shift <= 0:
        raise ValueError(f"shifted grid needs shift > 0, got {shift}")
    t = uniform_grid(num_steps)
    return t / (t + shift * (1.0 - t))


def cosine_grid(num_steps: int) -> Tensor:
    """``t_i = (1 - cos(pi i / N)) / 2``: steps are shortest at both ends of the path."""
    t = uniform_grid(num_steps)
    return 0.5 * (1.0 - torch.cos(math.pi * t))


TIME_GRIDS: dict[str, Callable[..., Tensor]] = {
    "uniform": uniform_grid,
    "shifted": shifted_grid,
    "cosine": cosine_grid,
}


def get_time_grid(name: str, num_steps: int, **kwargs: float) -> Tensor:
    """Build a registered time grid of ``num_steps + 1`` points from 0 to 1.

    Raises:
        ValueError: unknown name (the message lists the registered names).
    """
    if name not in TIME_GRIDS:
        raise ValueError(f"unknown time grid '{name}'; choose from {sorted(TIME_GRIDS)}")
    return TIME_GRIDS[name](num_steps, **kwargs)


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")


def _as_grid(time_grid: Tensor | Sequence[float]) -> list[float]:
    grid = [float(v) for v in torch.as_tensor(time_grid, dtype=torch.float64).reshape(-1)]
    if len(grid) < 2:
        raise ValueError(f"time_grid needs at least 2 points, got {len(grid)}")
    if any(b <= a for a, b in itertools.pairwise(grid)):
        raise ValueError(f"time_grid must be strictly increasing, got {grid}")
    return grid


class ODESolver:
    """Base class: one-step method applied on every interval of an increasing time grid.

    Attributes:
        name: registry name.
        order: global order of accuracy.
        evals_per_step: velocity evaluations per step.
    """

    name: str = "base"
    order: int = 0
    evals_per_step: int = 0

    def step(self, velocity: Velocity, x: Tensor, t0: float, t1: float, model_kwargs: dict) -> Tensor:
        """Advance ``x`` from ``t0`` to ``t1``."""
        raise NotImplementedError

    def solve(
        self,
        velocity: Velocity,
        x_init: Tensor,
        time_grid: Tensor | Sequence[float],
        *,
        return_trajectory: bool = False,
        progress: Callable[[int, int], None] | None = None,
        **model_kwargs,
    ) -> SolveResult:
        """Integrate from ``time_grid[0]`` to ``time_grid[-1]``.

        Args:
            velocity: ``velocity(x (B, ...), t (B,), **model_kwargs) -> (B, ...)``.
            x_init: state at ``time_grid[0]``, ``(B, ...)``.
            time_grid: strictly increasing times, e.g. :func:`uniform_grid`.
            return_trajectory: keep every grid state (copied to the CPU) in the result.
            progress: called as ``progress(steps_done, num_steps)`` after each step.
            **model_kwargs: passed to every ``velocity`` call (e.g. ``conditions=...``).

        Returns:
            :class:`SolveResult`.
        """
        grid = _as_grid(time_grid)
        x = x_init
        states = [x.detach().cpu().clone()] if return_trajectory else None
        num_steps = len(grid) - 1
        for i in range(num_steps):
            x = self.step(velocity, x, grid[i], grid[i + 1], model_kwargs)
            if states is not None:
                states.append(x.detach().cpu().clone())
            if progress is not None:
                progress(i + 1, num_steps)
        trajectory = torch.stack(states) if states is not None else None
        return SolveResult(x=x, trajectory=trajectory, nfe=num_steps * self.evals_per_step)

    @staticmethod
    def _eval(velocity: Velocity, x: Tensor, t: float, model_kwargs: dict) -> Tensor:
        t_batch = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        return velocity(x, t_batch, **model_kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EulerSolver(ODESolver):
    """Explicit Euler, ``x += dt v(x, t0)`` (the official sampler; first order)."""

    name, order, evals_per_step = "euler", 1, 1

    def step(self, velocity, x, t0, t1, model_kwargs):
        dt = t1 - t0
        return x + dt * self._eval(velocity, x, t0, model_kwargs)


class HeunSolver(ODESolver):
    """Heun (explicit trapezoid): Euler predictor, then the average of the slopes at both ends (second order).

    Every step evaluates the velocity at its end point, so the last step calls the network at ``t = 1``
    (the data end), a time the official Euler sampler never queries but training covers (``t ~ U(0, 1)``).
    """

    name, order, evals_per_step = "heun", 2, 2

    def step(self, velocity, x, t0, t1, model_kwargs):
        dt = t1 - t0
        v0 = self._eval(velocity, x, t0, model_kwargs)
        v1 = self._eval(velocity, x + dt * v0, t1, model_kwargs)
        return x + (0.5 * dt) * (v0 + v1)


class MidpointSolver(ODESolver):
    """Explicit midpoint: a half Euler step, then the full step with the slope there (second order)."""

    name, order, evals_per_step = "midpoint", 2, 2

    def step(self, velocity, x, t0, t1, model_kwargs):
        dt = t1 - t0
        v0 = self._eval(velocity, x, t0, model_kwargs)
        return x + dt * self._eval(velocity, x + (0.5 * dt) * v0, t0 + 0.5 * dt, model_kwargs)


class RK4Solver(ODESolver):
    """Classical fourth-order Runge-Kutta."""

    name, order, evals_per_step = "rk4", 4, 4

    def step(self, velocity, x, t0, t1, model_kwargs):
        dt = t1 - t0
        half = t0 + 0.5 * dt
        k1 = self._eval(velocity, x, t0, model_kwargs)
        k2 = self._eval(velocity, x + (0.5 * dt) * k1, half, model_kwargs)
        k3 = self._eval(velocity, x + (0.5 * dt) * k2, half, model_kwargs)
        k4 = self._eval(velocity, x + dt * k3, t1, model_kwargs)
        return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


SOLVERS: dict[str, type[ODESolver]] = {
    "euler": EulerSolver,
    "heun": HeunSolver,
    "midpoint": MidpointSolver,
    "rk4": RK4Solver,
}


def get_solver(name: str) -> ODESolver:
    """Build a registered solver.

    Raises:
        ValueError: unknown name (the message lists the registered names).
    """
    if name not in SOLVERS:
        raise ValueError(f"unknown solver '{name}'; choose from {sorted(SOLVERS)}")
    return SOLVERS[name]()
