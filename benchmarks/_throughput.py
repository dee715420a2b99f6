"""Sampling-throughput sections of ``fullsize.py``: batch sweep, compile modes, attention kernels, layer profile.

All of them time the default sampler end to end (``generate_wavelets`` + ``decode_and_export``: seeded noise,
midpoint × 10 on the cosine grid = 20 network evaluations, IDWT, crop), so the figures are seconds per exported
volume, comparable with ``benchmarks.md`` §0.

* **sweep**: the memory probe (:func:`flowlet.batching.auto_batch_size`) picks the largest batch that fits; every
  batch in ``1, 2, 4, …`` up to it (and the probe's own choice) is timed, for each variant: ``eager`` (as
  ``flowlet-generate`` runs today), ``channels_last`` (weights in ``torch.channels_last_3d``: cuDNN's NDHWC
  kernels; the first convolution converts the activations) and ``cudnn_benchmark`` (cuDNN times its algorithms
  for each shape once, which static sampling shapes amortise).
* **compile**: ``torch.compile`` with ``dynamic=False`` at one batch size, per mode (``default``,
  ``max-autotune-no-cudagraphs``, ``reduce-overhead`` = CUDA graphs). Recompiles are avoided by construction:
  the attention backend is fixed to SDPA (with ``"auto"`` the per-call ``import xformers`` attempt is a graph
  break at every attention block, 9 breaks and 10 graphs even in the tiny model; with ``"sdpa"`` the network is
  one graph), the time reaches the network as a tensor (the solvers pass ``t`` as a ``(B,)`` tensor, so a new
  time is new data, not a new guard), and every call has the same batch (``volumes`` is a multiple of it). The
  number of graphs, graph breaks and recompiles is read from Dynamo's counters and reported, with the relative
  error of the compiled sample against the eager one.
* **attention**: which SDPA kernels (flash, memory-efficient, cuDNN, math) accept the attention shapes of the
  model and what each costs; the profile shows which one the dispatcher picked.
* **profile**: ``torch.profiler`` over a few network evaluations, grouped by operator and by layer category
  (convolution, normalisation, activation, attention, matmul, elementwise, copies); and device time per leaf
  module type (timed with CUDA events around each module call; wall time on the CPU).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
from _common import log, sync

from flowlet.batching import auto_batch_size
from flowlet.checkpoint import FlowLetBundle
from flowlet.export import decode_and_export
from flowlet.sampling import SamplingConfig, generate_wavelets, sample_seeds

DEFAULT_SAMPLER = ("midpoint", 10, "cosine")
SWEEP_VARIANTS = ("eager", "channels_last", "cudnn_benchmark")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")
# operator name fragments -> layer category (first match wins)
CATEGORIES = (
    ("conv", ("conv", "cudnn_convolution")),
    ("attention", ("scaled_dot_product", "flash", "efficient_attention", "_cudnn_attention", "softmax")),
    ("normalisation", ("group_norm", "native_group_norm", "layer_norm", "batch_norm")),
    ("activation", ("silu", "gelu", "sigmoid")),
    ("matmul", ("addmm", "::mm", "bmm", "matmul", "linear")),
    ("resample", ("avg_pool", "upsample", "interpolate")),
    ("copy / layout", ("copy_", "contiguous", "to_copy", "clone", "cat", "permute")),
    ("elementwise", ("add", "mul", "sub", "div", "fill", "clamp", "chunk", "cos", "sin", "exp")),
)


def make_bundle(model: torch.nn.Module, cfg, size, save) -> FlowLetBundle:
    return FlowLetBundle(
        model=model,
        model_config=cfg,
        condition_ranges={"Age": (20.0, 90.0)},
        model_input_size=size,
        save_size=save,
        path_name="rectified",
        num_flow_steps=None,
        source_format="flowlet",
    )


def sampler(steps_scale: float, batch: int, device: torch.device, dtype: str | None) -> SamplingConfig:
    solver, steps, grid = DEFAULT_SAMPLER
    return SamplingConfig(
        solver=solver,
        num_steps=max(1, round(steps * steps_scale)),
        time_grid=grid,
        batch_size=batch,
        device=str(device),
        autocast_dtype=dtype,
    )


def generate(bundle: FlowLetBundle, config: SamplingConfig, volumes: int) -> torch.Tensor:
    """One end-to-end run of ``volumes`` samples; returns the Haar-space states (for error checks)."""
    ages = [20.0 + 70.0 * (i + 0.5) / volumes for i in range(volumes)]
    wave = generate_wavelets(bundle, ages, sample_seeds(0, volumes), config, progress=False)
    decode_and_export(wave, bundle.save_size)
    return wave


def timed(device: torch.device, fn: Callable[[], object]) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def sweep_batches(probe: int, max_batch: int) -> list[int]:
    """``1, 2, 4, …`` below the probe's choice, then the choice itself (capped at ``max_batch``)."""
    top = max(1, min(probe, max_batch))
    batches, b = [], 1
    while b < top:
        batches.append(b)
        b *= 2
    return [*batches, top]


@contextlib.contextmanager
def variant(name: str, model: torch.nn.Module) -> Iterator[None]:
    """Apply a sweep variant to ``model`` (and the cuDNN flags) for the duration of the block."""
    benchmark = torch.backends.cudnn.benchmark
    try:
        if name == "channels_last":
            model.to(memory_format=torch.channels_last_3d)
        elif name == "cudnn_benchmark":
            torch.backends.cudnn.benchmark = True
        elif name != "eager":
            raise ValueError(f"unknown sweep variant {name!r}; choose from {list(SWEEP_VARIANTS)}")
        yield
    finally:
        torch.backends.cudnn.benchmark = benchmark
        model.to(memory_format=torch.contiguous_format)


def run_sweep(args, device, clock, bundle: FlowLetBundle, flops: float, peak: float | None) -> list[dict]:
    """Seconds per volume of the default sampler at every batch up to the probe's choice, per variant."""
    dtype = "bf16" if device.type == "cuda" else None
    probe = auto_batch_size(bundle, sampler(args.steps_scale, 1, device, dtype), max_batch=args.max_batch)
    log.info("memory probe: batch %d (max %d)", probe, args.max_batch)
    rows = []
    for name in args.sweep_variants:
        with variant(name, bundle.model):
            for batch in sweep_batches(probe, args.max_batch):
                if clock.left() < 20:
                    log.info("sweep: budget spent, skipping %s batch %d", name, batch)
                    continue
                config = sampler(args.steps_scale, batch, device, dtype)
                generate(bundle, sampler(args.steps_scale / 10, batch, device, dtype), batch)  # warm-up
                volumes = batch * max(1, args.sweep_rounds)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                wall = timed(device, lambda config=config, volumes=volumes: generate(bundle, config, volumes))
                nfe = config.num_steps * 2
                achieved = flops * nfe * volumes / wall / 1e12
                rows.append(
                    {
                        "model": args.current_model,
                        "variant": name,
                        "precision": dtype or "fp32",
                        "batch": batch,
                        "probe_batch": probe,
                        "volumes": volumes,
                        "nfe": nfe,
                        "s_per_volume": wall / volumes,
                        "volumes_per_hour": 3600.0 * volumes / wall,
                        "tflops": achieved,
                        "frac_measured_peak": achieved / peak if peak else None,
                        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30
                        if device.type == "cuda"
                        else None,
                    }
                )
                log.info("sweep %s", rows[-1])
    return rows


class _Cloned(torch.nn.Module):
    """Copies the output of a CUDA-graph call: the next replay would overwrite it while a solver still uses it."""

    def __init__(self, inner: Callable) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs).clone()


def dynamo_counts() -> dict[str, int | None]:
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        # not every torch version keeps this counter; "frames_compiled" > 1 shows recompiles in any version
        "recompiles": int(sum(counters["recompiles"].values())) if "recompiles" in counters else None,
        "frames_compiled": int(counters["frames"].get("ok", 0)),
    }


def run_compile(args, device, clock, bundle: FlowLetBundle, batch: int) -> list[dict]:
    """Eager against ``torch.compile`` per mode, same batch, same noise; compile time, speed, graphs, error."""
    import torch._dynamo

    dtype = "bf16" if device.type == "cuda" else None
    config = sampler(args.steps_scale, batch, device, dtype)
    volumes = batch * max(1, args.sweep_rounds)
    eager_model = bundle.model
    generate(bundle, config, batch)  # warm-up
    reference = generate(bundle, config, volumes)
    eager = timed(device, lambda: generate(bundle, config, volumes)) / volumes
    rows = []
    for mode in args.compile_modes:
        if clock.left() < args.compile_min_budget:
            log.info("compile: budget spent, skipping mode %s", mode)
            continue
        if mode == "reduce-overhead" and device.type != "cuda":
            continue
        torch._dynamo.reset()
        from torch._dynamo.utils import counters

        counters.clear()
        compiled = torch.compile(eager_model, mode=None if mode == "default" else mode, dynamic=False)
        bundle.model = _Cloned(compiled) if mode == "reduce-overhead" else compiled
        try:
            first = timed(device, lambda: generate(bundle, config, batch))
            generate(bundle, config, batch)  # CUDA graphs are recorded on the second call
            out = generate(bundle, config, volumes)
            fast = timed(device, lambda: generate(bundle, config, volumes)) / volumes
            counts = dynamo_counts()
        finally:
            bundle.model = eager_model
        rows.append(
            {
                "model": args.current_model,
                "mode": mode,
                "batch": batch,
                "precision": dtype or "fp32",
                "eager_s_per_volume": eager,
                "compiled_s_per_volume": fast,
                "speedup": eager / fast,
                "first_call_s": first,
                **counts,
                "rel_err_vs_eager": float((out - reference).norm() / reference.norm()),
            }
        )
        log.info("compile %s", rows[-1])
    torch._dynamo.reset()
    return rows


def attention_shapes(model: torch.nn.Module, run: Callable[[], object]) -> list[tuple[int, ...]]:
    """The (q, k) shapes reaching ``scaled_dot_product_attention`` during ``run()``."""
    import torch.nn.functional as F

    seen, original = [], F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append((tuple(q.shape), tuple(k.shape), q.dtype))
        return original(q, k, v, *a, **kw)

    F.scaled_dot_product_attention = spy
    try:
        run()
    finally:
        F.scaled_dot_product_attention = original
    return list(dict.fromkeys(seen))


def run_attention(device: torch.device, shapes, repeats: int = 20) -> list[dict]:
    """Every SDPA backend on every attention shape of the model: accepted or not, and its time."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        backends.insert(2, SDPBackend.CUDNN_ATTENTION)
    rows = []
    for q_shape, k_shape, dtype in shapes:
        dtype = torch.bfloat16 if device.type == "cuda" else dtype
        q = torch.randn(q_shape, device=device, dtype=dtype)
        k = torch.randn(k_shape, device=device, dtype=dtype)
        for backend in backends:
            row = {"q": list(q_shape), "k": list(k_shape), "dtype": str(dtype), "backend": backend.name}
            try:
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, k)
                    wall = timed(
                        device,
                        lambda q=q, k=k: [F.scaled_dot_product_attention(q, k, k) for _ in range(repeats)],
                    )
                row |= {"ok": True, "ms": 1e3 * wall / repeats}
            except RuntimeError as err:
                row |= {"ok": False, "why": str(err).splitlines()[0][:200]}
            rows.append(row)
    return rows


def _self_time(event, device: torch.device) -> float:
    if device.type == "cuda":
        for name in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(event, name):
                return float(getattr(event, name))
    return float(event.self_cpu_time_total)


def _is_kernel(event) -> bool:
    kind = getattr(event, "device_type", None)
    return kind is not None and getattr(kind, "name", str(kind)) != "CPU"


def category(op: str) -> str:
    low = op.lower()
    for name, keys in CATEGORIES:
        if any(key in low for key in keys):
            return name
    return "other"


@contextlib.contextmanager
def module_timer(model: torch.nn.Module, device: torch.device) -> Iterator[dict[str, list]]:
    """Time every leaf module call (CUDA events on GPUs, wall clock on the CPU); yields ``{type: [pairs]}``."""
    spans: dict[str, list] = defaultdict(list)
    handles = []

    def now():
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    for module in model.modules():
        if next(module.children(), None) is not None:
            continue
        kind = type(module).__name__

        def pre(mod, inputs, kind=kind):
            mod._flowlet_t0 = now()

        def post(mod, inputs, output, kind=kind):
            spans[kind].append((mod._flowlet_t0, now()))

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield spans
    finally:
        for handle in handles:
            handle.remove()


def _span_ms(start, end) -> float:
    return start.elapsed_time(end) if hasattr(start, "elapsed_time") else 1e3 * (end - start)


def run_profile(
    device: torch.device, forward: Callable[[], object], model: torch.nn.Module, evals: int
) -> dict:
    """Where the time of ``evals`` network evaluations goes: per operator, per category, per leaf module type."""
    from torch.profiler import ProfilerActivity, profile

    forward()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(evals):
            forward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    ops, kernels = [], []
    for event in prof.key_averages():
        self_us = _self_time(event, device)
        if self_us <= 0:
            continue
        if _is_kernel(event):  # the ops above already hold their kernels' time as self device time
            kernels.append({"kernel": event.key[:160], "calls": event.count, "us": self_us})
        else:
            ops.append(
                {"op": event.key, "category": category(event.key), "calls": event.count, "self_us": self_us}
            )
    total = sum(o["self_us"] for o in ops) or 1.0
    ops.sort(key=lambda o: -o["self_us"])
    by_category: dict[str, float] = defaultdict(float)
    for o in ops:
        o["share"] = o["self_us"] / total
        by_category[o["category"]] += o["share"]
    with module_timer(model, device) as spans:
        forward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    modules = {kind: sum(_span_ms(a, b) for a, b in pairs) for kind, pairs in spans.items()}
    module_total = sum(modules.values()) or 1.0
    return {
        "time_basis": "device (CUDA kernels)" if device.type == "cuda" else "CPU self time",
        "evals": evals,
        "total_ms_per_eval": total / 1e3 / evals,
        "by_category": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
        "by_op": ops[:40],
        "by_module_type_ms_per_eval": {k: modules[k] for k in sorted(modules, key=lambda k: -modules[k])},
        "by_module_type_share": {
            k: modules[k] / module_total for k in sorted(modules, key=lambda k: -modules[k])
        },
        "by_kernel": sorted(kernels, key=lambda k: -k["us"])[:25],
        "sdpa_ops": sorted(
            {o["op"] for o in ops if "scaled_dot_product" in o["op"] or "attention" in o["op"]}
        ),
    }
