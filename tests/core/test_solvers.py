"""ODE solvers: exactness, convergence order, official Euler semantics, batching and the registry."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from flowlet.solvers import SOLVERS, TIME_GRIDS, get_solver, get_time_grid, uniform_grid

GRIDS = {
    "uniform": uniform_grid(7),
    "cosine": get_time_grid("cosine", 7),
    "shifted": get_time_grid("shifted", 7),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_exact_on_constant_field(name, grid):
    c = torch.tensor([[0.5, -2.0, 3.0]], dtype=torch.float64)
    x0 = torch.tensor([[1.0, 2.0, -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    result = get_solver(name).solve(lambda x, t: c.expand_as(x), x0, GRIDS[grid])
    torch.testing.assert_close(result.x, x0 + c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_exact_on_linear_in_time_field_for_second_order_and_up(name):
    # v = t: every solver of order >= 2 integrates a linear-in-t field exactly; Euler is off by h/2.
    x0 = torch.zeros(1, 1, dtype=torch.float64)
    x1 = get_solver(name).solve(lambda x, t: t[:, None].expand_as(x), x0, uniform_grid(5)).x
    if SOLVERS[name].order >= 2:
        assert float(x1) == pytest.approx(0.5, abs=1e-14)
    else:
        assert float(x1) == pytest.approx(0.5 - 0.5 / 5, abs=1e-14)


FIELDS = {
    # name: (velocity, exact x(1) from x(0) = 1)
    "decay": (lambda x, t: -1.5 * x, math.exp(-1.5)),
    "time_quadratic": (lambda x, t: (t**2)[:, None].expand_as(x), 1.0 + 1.0 / 3.0),
    "gaussian": (lambda x, t: -2.0 * t[:, None] * x, math.exp(-1.0)),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("field", sorted(FIELDS))
def test_convergence_order(name, field):
    velocity, exact = FIELDS[field]
    solver = get_solver(name)
    x0 = torch.ones(1, 1, dtype=torch.float64)
    errors = [abs(float(solver.solve(velocity, x0, uniform_grid(n)).x) - exact) for n in (8, 16)]
    if errors[0] < 1e-13:  # integrated exactly (e.g. RK4 = Simpson on a quadratic)
        assert errors[1] < 1e-13
        return
    rate = math.log2(errors[0] / errors[1])
    assert rate == pytest.approx(solver.order, abs=0.25), f"{name} on {field}: observed order {rate:.2f}"


def test_euler_follows_the_official_procedure():
    """t_i = float32(i / N), dt a Python double, x <- x + dt * v, state float32."""
    seen = []

    def velocity(x, t):
        seen.append(t.clone())
        return torch.sin(3.0 * x) + t[:, None]

    x0 = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    result = get_solver("euler").solve(velocity, x0, uniform_grid(4), return_trajectory=True)
    expected = [x0]
    for i in range(4):
        t = torch.full((2,), i * 0.25, dtype=torch.float32)
        expected.append(expected[-1] + 0.25 * (torch.sin(3.0 * expected[-1]) + t[:, None]))
    assert torch.equal(result.trajectory, torch.stack(expected))
    assert torch.equal(result.x, expected[-1])
    assert [float(t[0]) for t in seen] == [0.0, 0.25, 0.5, 0.75]
    assert all(t.dtype == torch.float32 and t.shape == (2,) for t in seen)
    assert result.nfe == 4


def test_heun_evaluates_the_data_end():
    seen = []
    get_solver("heun").solve(lambda x, t: seen.append(float(t[0])) or x, torch.ones(1, 1), uniform_grid(2))
    assert seen == [0.0, 0.5, 0.5, 1.0]


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_batch_independence_determinism_and_kwargs(name):
    def velocity(x, t, *, scale):
        return torch.sin(x) * t[:, None, None] - scale * torch.tanh(2.0 * x)

    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 2, generator=g)
    scale = torch.rand(4, 1, 1, generator=g)
    solver = get_solver(name)
    batch = solver.solve(velocity, x0, uniform_grid(6), scale=scale)
    again = solver.solve(velocity, x0, uniform_grid(6), scale=scale)
    assert torch.equal(batch.x, again.x)
    for i in range(4):
        single = solver.solve(velocity, x0[i : i + 1], uniform_grid(6), scale=scale[i : i + 1])
        torch.testing.assert_close(single.x, batch.x[i : i + 1], rtol=0, atol=1e-6)
    assert batch.nfe == 6 * solver.evals_per_step
    assert batch.trajectory is None


def test_trajectory_and_progress():
    calls = []
    result = get_solver("midpoint").solve(
        lambda x, t: -x,
        torch.ones(2, 3),
        uniform_grid(3),
        return_trajectory=True,
        progress=lambda i, n: calls.append((i, n)),
    )
    assert result.trajectory.shape == (4, 2, 3)
    assert torch.equal(result.trajectory[0], torch.ones(2, 3))
    assert torch.equal(result.trajectory[-1], result.x)
    assert calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("name", sorted(TIME_GRIDS))
def test_time_grids(name):
    grid = get_time_grid(name, 10)
    assert grid.shape == (11,)
    assert float(grid[0]) == 0.0
    assert float(grid[-1]) == pytest.approx(1.0, abs=1e-15)
    assert torch.all(grid[1:] > grid[:-1])


def test_shifted_grid_concentrates_steps_near_noise():
    grid = get_time_grid("shifted", 10, shift=3.0)
    steps = grid[1:] - grid[:-1]
    assert steps[0] < steps[-1]
    torch.testing.assert_close(get_time_grid("shifted", 10, shift=1.0), uniform_grid(10))


def test_uniform_grid_steps_round_like_the_official_dt():
    import numpy as np

    for n in (3, 7, 10, 100, 250, 999):
        g = uniform_grid(n).tolist()
        assert {np.float32(b - a) for a, b in itertools.pairwise(g)} == {np.float32(1.0 / n)}


def test_errors():
    with pytest.raises(ValueError, match=r"unknown solver 'nope'; choose from \["):
        get_solver("nope")
    with pytest.raises(ValueError, match="unknown time grid"):
        get_time_grid("nope", 3)
    with pytest.raises(ValueError, match="strictly increasing"):
        get_solver("euler").solve(lambda x, t: x, torch.ones(1), [0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="positive integer"):
        uniform_grid(0)
