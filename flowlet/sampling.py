"""Generate brain volumes from a trained FlowLet bundle: noise -> ODE in Haar space -> IDWT -> cropped NIfTI.

Reproducibility: sample ``i`` always starts from the noise of ``torch.Generator().manual_seed(sample_seed(seed,
i))`` drawn on the CPU, whatever the batch size, device or ablation. Any subset of a generated set can therefore be
regenerated alone, and two ablation modes run with the same seeds are *paired* (same noise per sample).

With ``solver="euler"``, the uniform grid and an official checkpoint, every step after the noise is the official
procedure (spec §4): ``t_i = i/N``, ``x += dt v``, IDWT, clamp to [-1, 1], centre crop, ``(x + 1)/2``, clamp to
[0, 1]. Only the noise differs from the official scripts, which draw one stream for a whole batch.

Example:
    >>> cfg = SamplingConfig(solver="euler", num_steps=100, batch_size=4)  # doctest: +SKIP
    >>> wavelets = generate_wavelets(bundle, ages=[45.0, 75.0], seeds=sample_seeds(1234, 2), config=cfg)
    >>> volumes = decode_and_export(wavelets, (91, 109, 91))  # flowlet.export; (2, 91, 109, 91) in [0, 1]

Decoding and writing volumes live in :mod:`flowlet.export`, the memory-bounded batch size in :mod:`flowlet.batching`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flowlet.data.runtime import AUTOCAST_DTYPES
from flowlet.guidance import ABLATIONS, ModelVelocity
from flowlet.solvers import SOLVERS, TIME_GRIDS, get_solver, get_time_grid

logger = logging.getLogger(__name__)

__all__ = [
    "GeneratedBatch",
    "SamplingConfig",
    "default_time_grid",
    "generate_wavelets",
    "initial_noise",
    "iter_generate",
    "latent_shape",
    "model_velocity",
    "normalize_conditions",
    "sample_seed",
    "sample_seeds",
]

_AUTOCAST = AUTOCAST_DTYPES  # one table of precision names, shared with the trainers


def default_time_grid(solver: str) -> str:
    """The time grid a solver runs on when none is named.

    ``uniform`` for ``euler``, because the official sampler steps uniformly and Euler on that grid reproduces it;
    ``cosine`` (shortest steps at both ends of the path) for the other solvers: on the trained demo model it gave
    the smallest error per network call (``docs/benchmarks.md`` §4.2).

    Example:
        >>> default_time_grid("euler"), default_time_grid("midpoint")
        ('uniform', 'cosine')
    """
    return "uniform" if solver == "euler" else "cosine"


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample.

    Attributes:
        solver: registered ODE solver (``flowlet.solvers.SOLVERS``); ``euler`` is the official sampler.
        num_steps: solver steps (network calls = steps x ``evals_per_step`` x (2 with guidance)). The default,
            midpoint x 10 steps on the cosine grid (20 network calls), reached the error of the official 100-step
            Euler on the trained demo model at a fifth of the cost (``docs/benchmarks.md`` §4.2).
        guidance_scale: classifier-free guidance scale; 1 = none.
        ablation: conditioning mechanisms (``flowlet.guidance.ABLATIONS``).
        batch_size: samples per network call; peak memory grows linearly with it.
        time_grid: registered time grid (``flowlet.solvers.TIME_GRIDS``); None (default) =
            :func:`default_time_grid` of the solver (``uniform`` for ``euler``, ``cosine`` for the others).
        clamp: clamp the decoded image to [-1, 1] (official) before export.
        device: torch device for the network.
        autocast_dtype: ``"bf16"`` / ``"fp16"`` for CUDA autocast of the network (state stays float32), or None.
    """

    solver: str = "midpoint"
    num_steps: int = 10
    guidance_scale: float = 1.0
    ablation: str = "baseline"
    batch_size: int = 4
    time_grid: str | None = None
    clamp: bool = True
    device: str = "cpu"
    autocast_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.time_grid is None:
            object.__setattr__(self, "time_grid", default_time_grid(self.solver))
        for field, value, registry in (
            ("solver", self.solver, SOLVERS),
            ("ablation", self.ablation, ABLATIONS),
            ("time_grid", self.time_grid, TIME_GRIDS),
            ("autocast_dtype", self.autocast_dtype, _AUTOCAST),
        ):
            if value not in registry:
                raise ValueError(
                    f"SamplingConfig.{field}: unknown value {value!r}; choose from {sorted(map(str, registry))}"
                )
        for field in ("num_steps", "batch_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SamplingConfig.{field} must be a positive integer, got {value!r}")


@dataclass
class GeneratedBatch:
    """One batch of :func:`iter_generate`: sample ``indices`` and their final states ``(b, 8, d, h, w)`` on the CPU."""

    indices: list[int]
    wavelets: Tensor


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample ``index``: 63 bits of ``numpy.random.SeedSequence([seed, index])``.

    SeedSequence hashes its entropy, so neighbouring ``(seed, index)`` pairs give unrelated streams.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & (2**63 - 1)


def sample_seeds(seed: int, count: int, start: int = 0) -> list[int]:
    """``[sample_seed(seed, i) for i in range(start, start + count)]``."""
    return [sample_seed(seed, i) for i in range(start, start + count)]


def initial_noise(seeds: Sequence[int], latent_shape: Sequence[int]) -> Tensor:
    """Standard normal noise ``(len(seeds), *latent_shape)`` float32, each row from its own CPU generator."""
    rows = [torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows)


def _range_of(ranges: Mapping, name: str) -> tuple[float, float]:
    r = ranges[name]
    if isinstance(r, Mapping):
        return float(r["min"]), float(r["max"])
    lo, hi = r
    return float(lo), float(hi)


def normalize_conditions(values: Mapping[str, Sequence[float]], ranges: Mapping) -> dict[str, Tensor]:
    """Min-max normalise raw condition values with the training ranges, as the official generator does.

    ``(v - min) / (max - min)`` in float64, clipped to [0, 1], then float32; 0.5 when ``max - min <= 1e-8``.
    Values outside the training range are clipped and a warning is logged.

    Args:
        values: ``{"Age": [45.0, 75.0]}`` raw values.
        ranges: ``{"Age": (min, max)}`` or the official ``{"Age": {"min": ..., "max": ...}}``.

    Returns:
        ``{"Age": Tensor (B, 1) float32}``.

    Raises:
        ValueError: a condition has no range.
    """
    out = {}
    for name, raw in values.items():
        if name not in ranges:
            raise ValueError(f"condition {name!r} has no training range; known ranges: {sorted(ranges)}")
        lo, hi = _range_of(ranges, name)
        v = torch.as_tensor(raw, dtype=torch.float64).reshape(-1, 1)
        if hi - lo <= 1e-8:
            out[name] = torch.full_like(v, 0.5).float()
            continue
        outside = v[(v < lo) | (v > hi)]
        if outside.numel():
            logger.warning(
                "%s values %s lie outside the training range [%g, %g] and are clipped",
                name,
                outside.flatten().tolist(),
                lo,
                hi,
            )
        out[name] = ((v - lo) / (hi - lo)).clamp(0.0, 1.0).float()
    return out


def _model_conditions(bundle, values: Mapping[str, Sequence[float]], n: int) -> dict[str, Tensor] | None:
    """Normalised conditions for the bundle's model; missing model conditions get 0.5 (official behaviour)."""
    names = tuple(bundle.model_config.condition_names)
    if not names:
        return None
    dropped = sorted(set(values) - set(names))
    if dropped:
        logger.warning(
            "conditions %s are not used by this model (it knows %s) and are ignored", dropped, list(names)
        )
    out = normalize_conditions({k: v for k, v in values.items() if k in names}, bundle.condition_ranges)
    for name in names:
        if name not in out:
            logger.warning("no value given for model condition %r; using the mid-range value 0.5", name)
            out[name] = torch.full((n, 1), 0.5)
        elif out[name].shape[0] != n:
            raise ValueError(f"condition {name!r} has {out[name].shape[0]} values for {n} seeds")
    return out


def model_velocity(bundle, config: SamplingConfig) -> ModelVelocity:
    """The bundle's network on ``config.device`` in eval mode, wrapped with the configured guidance and autocast."""
    model = bundle.model.to(torch.device(config.device)).eval()
    return ModelVelocity(
        model,
        ablation=config.ablation,
        guidance_scale=config.guidance_scale,
        autocast_dtype=_AUTOCAST[config.autocast_dtype],
    )


def latent_shape(bundle) -> tuple[int, ...]:
    """The Haar-space shape ``(8, d, h, w)`` of one sample of ``bundle``'s model."""
    size = tuple(int(s) for s in bundle.model_input_size)
    if any(s % 2 for s in size):
        raise ValueError(f"model_input_size {size} must be even along every axis")
    return (bundle.model_config.in_channels, *(s // 2 for s in size))


def iter_generate(
    bundle,
    ages: Sequence[float] | Mapping[str, Sequence[float]],
    seeds: Sequence[int],
    config: SamplingConfig,
    *,
    progress: bool = True,
    noise: Tensor | None = None,
) -> Iterator[GeneratedBatch]:
    """Yield final Haar-space states batch by batch (memory is bounded by ``config.batch_size``).

    Args:
        bundle: a ``FlowLetBundle`` (uses ``model``, ``model_config``, ``condition_ranges``, ``model_input_size``).
            The model is moved to ``config.device``.
        ages: raw ages (one per seed), or raw values per condition name ``{"Age": [...], ...}``.
        seeds: one seed per sample (see :func:`sample_seeds`).
        config: sampling settings.
        progress: show a tqdm bar over solver steps (with ETA).
        noise: explicit initial states ``(len(seeds), 8, d, h, w)`` instead of the seeded noise.

    Yields:
        :class:`GeneratedBatch` in sample order.
    """
    n = len(seeds)
    values = dict(ages) if isinstance(ages, Mapping) else {"Age": list(ages)}
    conditions = _model_conditions(bundle, values, n)
    shape = latent_shape(bundle)
    if noise is not None and tuple(noise.shape) != (n, *shape):
        raise ValueError(f"noise must have shape {(n, *shape)}, got {tuple(noise.shape)}")
    device = torch.device(config.device)
    velocity = model_velocity(bundle, config)
    solver = get_solver(config.solver)
    grid = get_time_grid(config.time_grid, config.num_steps)
    starts = list(range(0, n, config.batch_size))
    bar = _ProgressBar(len(starts) * config.num_steps, enabled=progress)
    try:
        for start in starts:
            idx = list(range(start, min(start + config.batch_size, n)))
            x = noise[idx] if noise is not None else initial_noise([seeds[i] for i in idx], shape)
            cond = None if conditions is None else {k: v[idx].to(device) for k, v in conditions.items()}
            with torch.no_grad():
                result = solver.solve(
                    velocity, x.to(device=device, dtype=torch.float32), grid, progress=bar, conditions=cond
                )
            yield GeneratedBatch(indices=idx, wavelets=result.x.float().cpu())
    finally:
        bar.close()


def generate_wavelets(
    bundle,
    ages: Sequence[float] | Mapping[str, Sequence[float]],
    seeds: Sequence[int],
    config: SamplingConfig,
    *,
    progress: bool = True,
    noise: Tensor | None = None,
) -> Tensor:
    """All final Haar-space states ``(len(seeds), 8, d, h, w)`` float32 on the CPU (see :func:`iter_generate`)."""
    batches = list(iter_generate(bundle, ages, seeds, config, progress=progress, noise=noise))
    return torch.cat([b.wavelets for b in batches])


class _ProgressBar:
    """tqdm bar over solver steps, callable as a solver ``progress`` hook; a no-op when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="sampling", unit="step")

    def __call__(self, done: int, num_steps: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
