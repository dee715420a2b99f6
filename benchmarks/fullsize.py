"""Full-size FlowLet on one GPU: sampling cost, training steps/s and memory, bf16 error, achieved TFLOP/s.

Sections (``--sections``, in this order; each is skipped once ``--budget`` seconds have passed):

* ``precision``: the ``paper-base`` forward at its real grid (8×56³, image 112³) in fp32 (TF32 off), fp32 with
  cuDNN TF32 (PyTorch's default for convolutions) and bf16 autocast, on the same inputs; max absolute error and
  relative RMS error against true fp32. Known cuDNN bf16 conv3d bugs would show up here.
* ``sampling``: ``flowlet.sampling.generate_wavelets`` + ``decode_and_export`` (noise, ODE solve, IDWT, crop to
  91×109×91) with random weights (cost does not depend on the values), for the official Euler-100 and the fast
  default (midpoint, 10 steps = 20 network evaluations, cosine grid), bf16 autocast and fp32, batch 1 and 4.
  FLOPs per network evaluation come from ``torch.utils.flop_counter.FlopCounterMode`` on the same call; achieved
  TFLOP/s = FLOPs × evaluations × volumes / wall time, and the fraction of the bf16 dense peak (the datasheet's
  989 TFLOP/s and the 8192³ bf16 matrix product measured in the same run).
* ``train``: ``flowlet.training.Trainer.train_step`` (the real step: path sample, autocast forward, band-weighted
  loss, backward, clipping, AdamW, EMA) of ``paper-base`` and ``paper-large`` on a 2 mm phantom cohort (``--cohort``,
  written when missing), at batch 1, 2, 4 with bf16 + gradient checkpointing (the recipe), and the variants without
  checkpointing and in fp32 at batch 1; steps/s, volumes/s, peak memory; FLOPs of one step counted by
  ``FlopCounterMode`` (includes the checkpointing recomputation).
* ``sweep`` (every model in ``--models``): the default sampler at every batch up to the memory probe's choice, for
  the variants eager / ``channels_last_3d`` / ``cudnn.benchmark`` (``_throughput.py``).
* ``compile``: ``torch.compile`` of the default sampler per mode (``default``, ``max-autotune-no-cudagraphs``,
  ``reduce-overhead``), static shapes and SDPA attention so that nothing recompiles; graphs, breaks, recompiles,
  compile time, speed-up and error against eager.
* ``attention``: every SDPA kernel on the model's attention shapes.
* ``profile``: operator / layer-category / leaf-module-type breakdown of a network evaluation, eager and for the
  fastest sweep variant ("before" and "after"), printed and written to ``--profile-out``.

On a CPU, run it at small sizes to check that it works: ``--models tiny --sections precision sampling train``, or
``--tiny`` (the tiny model, every section, reduced steps).

Usage:
    python benchmarks/fullsize.py --device cuda --out results/fullsize.json
    python benchmarks/fullsize.py --device cuda --sections sweep compile attention profile --out results/tp.json
    python benchmarks/fullsize.py --device cpu --tiny --out /tmp/fullsize-tiny.json
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from pathlib import Path

import torch
from _common import add_common_args, log, model_config, print_table, random_model, setup, sync, write_result
from _throughput import (
    COMPILE_MODES,
    SWEEP_VARIANTS,
    attention_shapes,
    make_bundle,
    run_attention,
    run_profile,
    run_sweep,
)
from _throughput import generate as generate_volumes
from _throughput import run_compile as run_compile_modes
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from configs import config_path
from flowlet.sampling import SamplingConfig

DATASHEET_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16
SOLVERS = {"euler-100": ("euler", 100, "uniform"), "midpoint-10-cosine": ("midpoint", 10, "cosine")}
EVALS_PER_STEP = {"euler": 1, "midpoint": 2}


class Clock:
    """Seconds since the start, and whether the budget still allows a section."""

    def __init__(self, budget: float) -> None:
        self.t0 = time.perf_counter()
        self.budget = budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def data_sizes(name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    import yaml

    with open(config_path("flowlet", name), encoding="utf-8") as handle:
        data = yaml.safe_load(handle)["data"]
    size = tuple(data["image_size"])
    return size, tuple(data.get("save_size", size))


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def forward_inputs(cfg, image_size, batch, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    grid = [s // 2 for s in image_size]
    x = torch.randn(batch, cfg.in_channels, *grid, generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    cond = {name: torch.rand(batch, 1, generator=g).to(device) for name in cfg.condition_names}
    return x, t, cond


def forward_flops(model, cfg, image_size, device) -> float:
    """FLOPs of one network evaluation on one sample (counted, not estimated)."""
    x, t, cond = forward_inputs(cfg, image_size, 1, device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, cond)
    return float(counter.get_total_flops())


def matmul_tflops(device: torch.device) -> float | None:
    """Measured bf16 dense matrix-product rate (8192³, mean of 10 after 3 warm-ups)."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 2 * 8192**3 * 10 / (time.perf_counter() - t0) / 1e12


# ------------------------------------------------------------------------------------------------ precision
def run_precision(args, device, model_name: str) -> list[dict]:
    cfg = model_config(model_name)
    size, _ = data_sizes(model_name)
    model = random_model(cfg).to(device)
    x, t, cond = forward_inputs(cfg, size, 1, device)
    cudnn_tf32, matmul_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    outs = {}
    try:
        with torch.no_grad():
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            outs["fp32"] = model(x, t, cond).float()
            torch.backends.cudnn.allow_tf32 = True
            outs["fp32 (cuDNN TF32)"] = model(x, t, cond).float()
            if device.type == "cuda":
                with autocast(device, torch.bfloat16):
                    outs["bf16 autocast"] = model(x, t, cond).float()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_tf32, matmul_tf32
    ref = outs["fp32"]
    rows = []
    for name, out in outs.items():
        diff = out - ref
        rows.append(
            {
                "model": model_name,
                "grid": "x".join(str(s // 2) for s in size),
                "variant": name,
                "max_abs_err": float(diff.abs().max()),
                "rel_rms_err": float(diff.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()),
                "output_rms": float(out.pow(2).mean().sqrt()),
                "finite": bool(torch.isfinite(out).all()),
            }
        )
    del model, outs
    return rows


# ------------------------------------------------------------------------------------------------- sampling
def run_sampling(args, device, clock: Clock, model_name: str, peak: float | None) -> tuple[list[dict], float]:
    cfg = model_config(model_name)
    size, save = data_sizes(model_name)
    model = random_model(cfg).to(device)
    flops = forward_flops(model, cfg, size, device)
    bundle = make_bundle(model, cfg, size, save)

    def generate(solver, steps, grid, batch, volumes, dtype):
        scfg = SamplingConfig(
            solver=solver,
            num_steps=steps,
            time_grid=grid,
            batch_size=batch,
            device=str(device),
            autocast_dtype=dtype,
        )
        generate_volumes(bundle, scfg, volumes)

    generate("euler", 1, "uniform", 1, 1, "bf16" if device.type == "cuda" else None)  # warm-up
    plan = []
    for dtype in ("bf16", None) if device.type == "cuda" else (None,):
        for label in SOLVERS:
            for batch in args.sample_batches:
                plan.append((label, dtype, batch))
    rows = []
    for label, dtype, batch in plan:
        solver, steps, grid = SOLVERS[label]
        steps = max(1, round(steps * args.steps_scale))
        nfe = steps * EVALS_PER_STEP[solver]
        volumes = max(batch, args.volumes if dtype == "bf16" else batch)
        if clock.left() < 30:
            log.info("sampling: budget spent, skipping %s %s batch %d", label, dtype, batch)
            continue
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        generate(solver, steps, grid, batch, volumes, dtype)
        sync(device)
        wall = time.perf_counter() - t0
        achieved = flops * nfe * volumes / wall / 1e12
        row = {
            "model": model_name,
            "image": "x".join(map(str, size)),
            "solver": label if args.steps_scale == 1 else f"{solver}-{steps}-{grid}",
            "nfe": nfe,
            "precision": dtype or "fp32",
            "batch": batch,
            "volumes": volumes,
            "s_per_volume": wall / volumes,
            "volumes_per_hour": 3600.0 * volumes / wall,
            "ms_per_nfe_per_volume": 1e3 * wall / volumes / nfe,
            "tflops": achieved,
            "frac_datasheet_peak": achieved / DATASHEET_BF16_TFLOPS if device.type == "cuda" else None,
            "frac_measured_peak": achieved / peak if peak else None,
            "peak_gib": peak_gib(device),
        }
        log.info("sampling %s", row)
        rows.append(row)
    return rows, flops


# ---------------------------------------------------------------------------------------------------- train
def make_trainer(model_name: str, cohort: Path, device, run_dir: Path, precision: str):
    from flowlet.training.config import load_train_config
    from flowlet.training.trainer import Trainer

    cfg = load_train_config(
        config_path("flowlet", model_name),
        [
            f"data.source={cohort}",
            "data.num_workers=0",
            f"runtime.device={device}",
            f"runtime.run_dir={run_dir}",
            f"training.precision={precision}",
            "training.batch_size=1",
        ],
    )
    return Trainer(cfg)


def set_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    for module in model.modules():
        if hasattr(module, "use_checkpoint"):
            module.use_checkpoint = enabled


def run_train(args, device, clock: Clock, model_name: str, cohort: Path, peak: float | None) -> list[dict]:
    rows = []
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = make_trainer(model_name, cohort, device, Path(run_dir), "bf16" if cuda else "fp32")
        items = [trainer.train_set[i] for i in range(max(args.train_batches))]
        smallest = min(args.train_batches)
        variants = [("bf16" if cuda else "fp32", True, b) for b in args.train_batches]
        variants.append(("bf16" if cuda else "fp32", False, smallest))
        if cuda:
            variants.append(("fp32", True, smallest))
        step = 0
        for precision, ckpt, batch_size in variants:
            if clock.left() < 45:
                log.info("train: budget spent, skipping %s %s b%d", model_name, precision, batch_size)
                continue
            trainer.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
            set_checkpointing(trainer.model, ckpt)
            batch = default_collate(items[:batch_size])
            reset_peak(device)
            for _ in range(2):  # warm-up: cuDNN algorithm choice, allocator
                trainer.train_step(batch, step)
                step += 1
            with FlopCounterMode(display=False) as counter:
                trainer.train_step(batch, step)
            step += 1
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.train_steps):
                trainer.train_step(batch, step)
                step += 1
            sync(device)
            wall = (time.perf_counter() - t0) / args.train_steps
            achieved = counter.get_total_flops() / wall / 1e12
            row = {
                "model": model_name,
                "params_M": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
                "precision": precision,
                "checkpointing": ckpt,
                "batch": batch_size,
                "s_per_step": wall,
                "steps_per_s": 1.0 / wall,
                "volumes_per_s": batch_size / wall,
                "step_tflop": counter.get_total_flops() / 1e12,
                "tflops": achieved,
                "frac_measured_peak": achieved / peak if peak else None,
                "peak_gib": peak_gib(device),
            }
            log.info("train %s", row)
            rows.append(row)
        del trainer, items
    reset_peak(device)
    return rows


def ensure_cohort(path: Path, n: int, voxel_size: int, wait_s: float) -> Path:
    """Use the phantom cohort at ``path`` (waiting for a writer in another process), else write one."""
    marker = path / "dataset_description.json"
    deadline = time.perf_counter() + wait_s
    while not marker.exists() and time.perf_counter() < deadline:
        time.sleep(2)
    if not marker.exists():
        from flowlet.data.phantom.cohort import write_phantom_cohort

        write_phantom_cohort(path, n, voxel_size=voxel_size, seed=0, progress=False)
    return path


SECTIONS = ["precision", "sampling", "train", "sweep", "compile", "attention", "profile"]
TINY_DEFAULTS = {"models": ["tiny"], "steps_scale": 0.2, "max_batch": 4, "volumes": 2, "train_batches": [1, 2],
                 "train_steps": 1, "cohort_size": 4, "voxel_size": 4, "profile_evals": 1}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, "fullsize")
    parser.add_argument(
        "--sections", nargs="+", default=["precision", "sampling", "train", "compile"], choices=SECTIONS
    )
    parser.add_argument("--models", nargs="+", default=["paper-base", "paper-large"], help="training configs")
    parser.add_argument("--tiny", action="store_true", help="CPU proof run: the tiny model, every section")
    parser.add_argument("--sample-batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--volumes", type=int, default=4, help="volumes per bf16 sampling run (default 4)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scale solver steps (CPU smoke runs)")
    parser.add_argument("--train-batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--train-steps", type=int, default=5, help="timed steps per training variant")
    parser.add_argument("--cohort", type=Path, help="2 mm phantom cohort for training (written when missing)")
    parser.add_argument("--cohort-size", type=int, default=12)
    parser.add_argument("--voxel-size", type=int, default=2, choices=(2, 4))
    parser.add_argument(
        "--wait-cohort", type=float, default=0.0, help="seconds to wait for another process writing --cohort"
    )
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch the sweep / probe may pick")
    parser.add_argument("--sweep-variants", nargs="+", default=list(SWEEP_VARIANTS), choices=SWEEP_VARIANTS)
    parser.add_argument(
        "--sweep-rounds", type=int, default=1, help="timed batches per sweep point (default 1)"
    )
    parser.add_argument("--compile-modes", nargs="+", default=list(COMPILE_MODES), choices=COMPILE_MODES)
    parser.add_argument(
        "--compile-batch", type=int, help="batch for the compile section (default: sweep's best)"
    )
    parser.add_argument(
        "--compile-min-budget", type=float, default=90.0, help="seconds a compile mode needs to be started"
    )
    parser.add_argument("--profile-evals", type=int, default=3, help="network evaluations profiled")
    parser.add_argument("--profile-out", help="profile JSON (default: <out>-profile.json)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds; later sections are skipped")
    args = parser.parse_args(argv)
    if args.tiny:
        for key, value in TINY_DEFAULTS.items():
            setattr(args, key, value)
        if args.sections == parser.get_default("sections"):
            args.sections = list(SECTIONS)
    args.profile_out = args.profile_out or str(Path(args.out).with_suffix("")) + "-profile.json"
    return args


def throughput_bundle(name: str, device: torch.device):
    """A random-weight bundle of config ``name`` on ``device`` with SDPA attention, and its FLOPs per evaluation."""
    cfg = model_config(name, attention_backend="sdpa", use_checkpoint=False)
    size, save = data_sizes(name)
    model = random_model(cfg).to(device).eval()
    return make_bundle(model, cfg, size, save), forward_flops(model, cfg, size, device)


def best_sweep_row(rows: list[dict], model: str) -> dict | None:
    mine = [r for r in rows if r["model"] == model]
    return min(mine, key=lambda r: r["s_per_volume"]) if mine else None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = setup(args)
    clock = Clock(args.budget)
    logging.getLogger("flowlet").setLevel(logging.WARNING)
    peak = matmul_tflops(device)
    log.info("bf16 matmul peak measured: %s TFLOP/s", peak)
    payload: dict = {"measured_bf16_matmul_tflops": peak, "datasheet_bf16_tflops": DATASHEET_BF16_TFLOPS}
    first = args.models[0]

    def save() -> None:
        write_result(args.out, "fullsize", device, payload)

    def section(name: str, fn) -> None:
        """Run one section; a failure is recorded and the later sections still run."""
        if name not in args.sections:
            return
        try:
            fn()
        except Exception as exc:  # a benchmark run reports the failure and goes on
            log.exception("section %s failed", name)
            payload.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        save()

    def precision() -> None:
        payload["precision"] = run_precision(args, device, first)
        print_table(payload["precision"])

    def sampling() -> None:
        rows, flops = run_sampling(args, device, clock, first, peak)
        payload["sampling"], payload["forward_tflop_per_volume"] = rows, flops / 1e12
        print_table(rows)

    def train() -> None:
        cohort = args.cohort or Path(tempfile.mkdtemp(prefix="fullsize-cohort-")) / "cohort"
        ensure_cohort(cohort, args.cohort_size, args.voxel_size, wait_s=args.wait_cohort)
        payload["train"] = []
        for name in args.models:
            if clock.left() < 60:
                log.info("train: budget spent before %s", name)
                break
            payload["train"] += run_train(args, device, clock, name, cohort, peak)
            save()
        print_table(payload["train"])

    def sweep() -> None:
        payload["sweep"] = []
        for name in args.models:
            if clock.left() < 30:
                log.info("sweep: budget spent before %s", name)
                break
            bundle, flops = throughput_bundle(name, device)
            payload.setdefault("forward_tflop_per_volume_by_model", {})[name] = flops / 1e12
            args.current_model = name
            payload["sweep"] += run_sweep(args, device, clock, bundle, flops, peak)
            del bundle
            reset_peak(device)
            save()
        print_table(payload["sweep"])

    def best_batch() -> int:
        row = best_sweep_row(payload.get("sweep", []), first)
        return args.compile_batch or (row["batch"] if row else max(args.sample_batches))

    def compile_() -> None:
        bundle, _ = throughput_bundle(first, device)
        args.current_model = first
        payload["compile"] = run_compile_modes(args, device, clock, bundle, best_batch())
        print_table(payload["compile"])

    def profile_forward(bundle, batch: int):
        x, t, cond = forward_inputs(bundle.model_config, bundle.model_input_size, batch, device)
        dtype = torch.bfloat16 if device.type == "cuda" else None

        def forward():
            with torch.no_grad(), autocast(device, dtype):
                bundle.model(x, t, cond)

        return forward

    def attention() -> None:
        bundle, _ = throughput_bundle(first, device)
        shapes = attention_shapes(bundle.model, profile_forward(bundle, best_batch()))
        payload["attention"] = run_attention(device, shapes)
        print_table(payload["attention"])

    def profile() -> None:
        from _throughput import variant

        bundle, _ = throughput_bundle(first, device)
        batch = best_batch()
        best = best_sweep_row(payload.get("sweep", []), first)
        variants = list(dict.fromkeys(["eager", best["variant"] if best else "eager"]))
        result = {"model": first, "batch": batch, "variants": {}}
        for name in variants:
            with variant(name, bundle.model):
                result["variants"][name] = run_profile(
                    device, profile_forward(bundle, batch), bundle.model, args.profile_evals
                )
            shares = result["variants"][name]["by_category"]
            print_table([{"variant": name, **{k: f"{100 * v:.1f} %" for k, v in shares.items()}}])
            print_table(
                result["variants"][name]["by_op"][:15], ["op", "category", "calls", "self_us", "share"]
            )
        payload["profile"] = result
        from flowlet.data.io import write_json_atomic

        write_json_atomic(args.profile_out, result)

    for name, fn in (("precision", precision), ("sampling", sampling), ("train", train), ("sweep", sweep),
                     ("compile", compile_), ("attention", attention), ("profile", profile)):  # fmt: skip
        section(name, fn)
    payload["elapsed_s"] = time.perf_counter() - clock.t0
    save()


if __name__ == "__main__":
    main()
