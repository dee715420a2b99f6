"""Probability paths and time samplers: endpoints, exact velocities, registry behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from flowlet.paths import PATHS, TIME_SAMPLERS, RectifiedPath, VPPath, get_path, get_time_sampler

SHAPES = [(3, 5), (2, 8, 4, 4, 4), (4, 1, 3, 2)]


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(
        shape, generator=g, dtype=torch.float64
    )


@pytest.mark.parametrize("name", sorted(PATHS))
@pytest.mark.parametrize("shape", SHAPES)
def test_velocity_is_time_derivative(name, shape):
    path = get_path(name)
    x_0, x_1 = _pair(shape)
    # Stay away from t = 1, where the VP velocity diverges.
    t = torch.linspace(0.05, 0.95, shape[0], dtype=torch.float64)
    # x_t of sample b depends only on t_b, so a JVP with tangent 1 gives d x_t / dt for every sample at once.
    _, numeric = torch.autograd.functional.jvp(
        lambda tt: path.sample(x_0, x_1, tt).x_t, t, torch.ones_like(t)
    )
    torch.testing.assert_close(numeric, path.sample(x_0, x_1, t).dx_t, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(PATHS))
@pytest.mark.parametrize("shape", SHAPES)
def test_endpoints(name, shape):
    path = get_path(name)
    x_0, x_1 = _pair(shape, seed=1)
    b = shape[0]
    at_one = path.sample(x_0, x_1, torch.ones(b, dtype=torch.float64)).x_t
    torch.testing.assert_close(at_one, x_1, rtol=0, atol=1e-12)
    at_zero = path.sample(x_0, x_1, torch.zeros(b, dtype=torch.float64)).x_t
    if isinstance(path, VPPath):
        # x_t(0) = a x_1 + sqrt(1 - a^2) x_0 with a = alpha(1): |x_t(0) - x_0| <= a |x_1| + a^2 |x_0|.
        a = path.alpha_at_noise_end()
        assert a == pytest.approx(math.exp(-5.025))
        assert torch.all((at_zero - x_0).abs() <= a * x_1.abs() + a**2 * x_0.abs() + 1e-12)
        assert (at_zero - x_0).abs().max() > 1e-4  # really approximate, not exact
    else:
        torch.testing.assert_close(at_zero, x_0, rtol=0, atol=1e-12)


def test_rectified_closed_form_and_cfm_alias():
    x_0, x_1 = _pair((3, 4))
    t = torch.tensor([0.0, 0.3, 0.9], dtype=torch.float64)
    s = get_path("rectified").sample(x_0, x_1, t)
    torch.testing.assert_close(s.x_t, (1 - t[:, None]) * x_0 + t[:, None] * x_1)
    torch.testing.assert_close(s.dx_t, x_1 - x_0)
    c = get_path("cfm").sample(x_0, x_1, t)
    assert isinstance(get_path("cfm"), RectifiedPath)
    torch.testing.assert_close(c.x_t, s.x_t, rtol=0, atol=0)
    torch.testing.assert_close(c.dx_t, s.dx_t, rtol=0, atol=0)
    # The official cfm target (x_1 - x_t) / (1 - t + 1e-8) equals x_1 - x_0 up to the 1e-8.
    official = (x_1 - c.x_t) / (1 - t[:, None] + 1e-8)
    torch.testing.assert_close(official, c.dx_t, rtol=1e-6, atol=1e-6)


def test_trigonometric_closed_form():
    x_0, x_1 = _pair((2, 3))
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)[:, None]
    s = get_path("trigonometric").sample(x_0, x_1, t[:, 0])
    h = math.pi / 2
    torch.testing.assert_close(s.x_t, torch.cos(h * t) * x_0 + torch.sin(h * t) * x_1)
    torch.testing.assert_close(s.dx_t, h * (-torch.sin(h * t) * x_0 + torch.cos(h * t) * x_1))


def test_vp_matches_official_target_away_from_one():
    path = get_path("vp_diffusion", beta_min=0.1, beta_max=20.0)
    x_0, x_1 = _pair((4, 6))
    t = torch.tensor([0.0, 0.3, 0.8, 0.99], dtype=torch.float64)
    s = path.sample(x_0, x_1, t)
    torch.testing.assert_close(path.official_target(s.x_t, x_1, t), s.dx_t, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_velocity_to_x1_and_x0_invert_the_path(name):
    path = get_path(name)
    x_0, x_1 = _pair((3, 2, 5))
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    s = path.sample(x_0, x_1, t)
    torch.testing.assert_close(path.velocity_to_x1(s.dx_t, s.x_t, t), x_1)
    torch.testing.assert_close(path.velocity_to_x0(s.dx_t, s.x_t, t), x_0)


def test_unknown_names_and_bad_shapes():
    with pytest.raises(ValueError, match=r"unknown path 'nope'; choose from \["):
        get_path("nope")
    with pytest.raises(ValueError, match="unknown time sampler"):
        get_time_sampler("nope")
    with pytest.raises(ValueError, match=r"t must have shape"):
        get_path("rectified").sample(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="beta_min"):
        VPPath(beta_min=5.0, beta_max=1.0)


@pytest.mark.parametrize("name", sorted(TIME_SAMPLERS))
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_time_samplers_range_shape_determinism(name, batch):
    sampler = get_time_sampler(name)
    t = sampler(batch, generator=torch.Generator().manual_seed(3))
    assert t.shape == (batch,)
    assert t.dtype == torch.float32
    assert torch.all((t >= 0) & (t <= 1))
    again = sampler(batch, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t, again)
    other = sampler(batch, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(t, other)


def test_stratified_covers_one_value_per_stratum():
    t = get_time_sampler("stratified")(10, generator=torch.Generator().manual_seed(0))
    assert t.max() < 1 - 1e-5
    strata = torch.floor(torch.sort(t).values * 10).long()
    assert strata.tolist() == list(range(10))


def test_logit_normal_median_follows_mean():
    sampler = get_time_sampler("logit_normal", mean=1.0, std=0.5)
    t = sampler(20000, generator=torch.Generator().manual_seed(0))
    assert float(t.median()) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.01)
