"""Device-agreement checks shared by the CUDA tests (``test_cuda.py``) and their CPU proof (``test_agreement_logic.py``).

Each function runs one computation on the CPU in float32 (the reference) and on a *candidate* device / precision,
and returns a relative error. The CUDA tests call them with ``device="cuda"``; the CPU tests call the same code with
``device="cpu"`` (exact agreement expected) and with CPU bf16 autocast, a coarser rounding than TF32 or CUDA bf16
matrix products, to show that the tolerances below hold for bf16-sized rounding and that a real change exceeds them.

Relative errors are measured on what the computation changes, not on its input: for sampling the displacement
``x_1 - x_0`` (the noise ``x_0`` would hide an error in the velocity), for training the parameter updates.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from flowlet.checkpoint import FlowLetBundle, load_bundle
from flowlet.models import ConditionalUNet, UNetConfig
from flowlet.paths import get_path
from flowlet.sampling import SamplingConfig, generate_wavelets, sample_seeds
from flowlet.training.loss import flow_matching_loss
from flowlet.wavelets import dwt3d, idwt3d

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"
#: relative-error bounds: "fp32" covers TF32 convolutions (cuDNN's default on Ampere and later), "bf16" autocast
TOLERANCE = {"fp32": 1e-2, "bf16": 5e-2}
TINY = UNetConfig(
    model_channels=16,
    channel_mult=(1, 2),
    attention_resolutions=(2,),
    num_heads=2,
    norm_num_groups=4,
    condition_embedding_dim=16,
    dropout=0.0,
)


def relative_error(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    """``‖candidate − reference‖ / ‖reference‖`` in float64 on the CPU."""
    candidate, reference = candidate.detach().double().cpu(), reference.detach().double().cpu()
    return float(torch.linalg.vector_norm(candidate - reference) / torch.linalg.vector_norm(reference))


def _cpu_autocast(device: str, precision: str):
    """On the CPU, bf16 is emulated with CPU autocast (the sampler applies autocast on CUDA only)."""
    if device == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fixture_bundle() -> FlowLetBundle:
    """The random-weight official fixture network (CPU, float32)."""
    return load_bundle(FIXTURES / "model.pth")


def sampling_error(
    bundle: FlowLetBundle,
    device: str,
    precision: str = "fp32",
    *,
    steps: int = 4,
    candidate: FlowLetBundle | None = None,
) -> float:
    """Relative error of the default sampler's displacement ``x_1 − x_0`` on ``device`` against the CPU.

    ``candidate`` (default: ``bundle``) is the network run on ``device``; another one shows the check can fail.
    """
    candidate = candidate or bundle
    ages, seeds = [30.0, 70.0], sample_seeds(11, 2)
    shape = (bundle.model_config.in_channels, *(s // 2 for s in bundle.model_input_size))
    noise = torch.randn(2, *shape, generator=torch.Generator().manual_seed(4))
    reference = generate_wavelets(
        bundle, ages, seeds, SamplingConfig(num_steps=steps, device="cpu"), progress=False, noise=noise
    )
    config = SamplingConfig(
        num_steps=steps, device=device, autocast_dtype=None if precision == "fp32" else precision
    )
    with _cpu_autocast(device, precision):
        result = generate_wavelets(candidate, ages, seeds, config, progress=False, noise=noise)
    candidate.model.to("cpu")
    return relative_error(result - noise, reference - noise)


@dataclass(frozen=True)
class TrainingRun:
    losses: list[float]
    update: torch.Tensor  # final minus initial parameters, flattened, on the CPU


def train_steps(device: str, precision: str = "fp32", *, steps: int = 3, seed: int = 0) -> TrainingRun:
    """A few SGD steps of the flow-matching loss on fixed data, from the same initial weights.

    SGD rather than Adam: the Adam step is close to ``lr · sign(grad)`` at first, so a gradient entry near zero
    can flip its update under any rounding, and the comparison would measure that instead of the gradients.
    """
    torch.manual_seed(seed)
    model = ConditionalUNet(TINY)
    initial = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    path = get_path("rectified")
    g = torch.Generator().manual_seed(seed + 1)
    batches = [
        (
            torch.randn(2, 8, 4, 4, 4, generator=g),
            torch.randn(2, 8, 4, 4, 4, generator=g),
            torch.rand(2, generator=g),
        )
        for _ in range(steps)
    ]
    ages = torch.tensor([[0.2], [0.8]])
    losses = []
    for x_1, x_0, t in batches:
        optimizer.zero_grad(set_to_none=True)
        autocast = (
            torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
            if precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            out = flow_matching_loss(
                model, path, x_1.to(device), x_0.to(device), t.to(device), conditions={"Age": ages.to(device)}
            )
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    final = torch.nn.utils.parameters_to_vector(model.parameters()).detach().cpu()
    return TrainingRun(losses=losses, update=final - initial)


def training_errors(device: str, precision: str = "fp32") -> tuple[float, float]:
    """(largest relative loss difference, relative error of the parameter update) against the CPU in float32."""
    reference = train_steps("cpu")
    candidate = train_steps(device, precision)
    loss_error = max(abs(a - b) / abs(b) for a, b in zip(candidate.losses, reference.losses))
    return loss_error, relative_error(candidate.update, reference.update)


def official_fixture_errors(device: str) -> dict[str, float]:
    """Velocity and full Euler sample of the official fixtures on ``device`` against the stored outputs."""
    bundle = fixture_bundle()
    model = bundle.model.to(device)
    velocity = torch.load(FIXTURES / "velocity.pt", weights_only=True)
    sample = torch.load(FIXTURES / "sample.pt", weights_only=True)
    with torch.no_grad():
        v = model(
            velocity["x"].to(device), velocity["t"].to(device), {"Age": velocity["age_norm"].to(device)}
        )
    config = SamplingConfig(solver="euler", num_steps=sample["num_flow_steps"], device=device)
    x_1 = generate_wavelets(
        bundle, sample["ages_years_list"], [0, 1], config, progress=False, noise=sample["x0"]
    )
    image = idwt3d(x_1.to(device)).cpu()
    bundle.model.to("cpu")
    return {
        "velocity": relative_error(v, velocity["v"]),
        "sample": relative_error(x_1 - sample["x0"], sample["x1_wavelet"] - sample["x0"]),
        "image": relative_error(image, sample["image_unclamped"]),
    }


def codec_errors(device: str) -> dict[str, float]:
    """Haar DWT / IDWT on ``device`` against the float64 CPU transform, and the round trip on ``device``.

    The sizes are even but not cubic (and not powers of two), so the gather/permute paths used on GPUs and the
    conv/complex paths used on the CPU see the same awkward strides.
    """
    x = torch.randn(2, 1, 10, 14, 6, generator=torch.Generator().manual_seed(2))
    exact = dwt3d(x.double())
    bands = dwt3d(x.to(device))
    back = idwt3d(bands)
    return {
        "dwt": relative_error(bands, exact),
        "idwt": relative_error(idwt3d(exact.to(device)), x.double()),
        "round_trip": relative_error(back, x),
        "norm": abs(
            float(torch.linalg.vector_norm(bands.double())) / float(torch.linalg.vector_norm(x.double())) - 1
        ),
    }


def perturbed(bundle: FlowLetBundle, scale: float = 0.05) -> FlowLetBundle:
    """The same bundle with every weight moved by ``scale`` of its own size (for the sensitivity check)."""
    model = ConditionalUNet(bundle.model_config)
    model.load_state_dict(bundle.model.state_dict())
    with torch.no_grad():
        g = torch.Generator().manual_seed(9)
        for p in model.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g))
    from dataclasses import replace

    return replace(bundle, model=model.eval())


def finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)
