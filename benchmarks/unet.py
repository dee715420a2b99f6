"""U-Net forward and training step: fp32 eager vs channels_last_3d, bf16 autocast and (optionally) torch.compile.

Cases (``label: config, wavelet grid, batch``):

* ``demo``: the ``model`` section of ``configs/flowlet/demo.yaml`` at its real grid 8×24×28×24 (image 48×56×48), batch 4;
* ``base-16``: ``paper-base`` (356 M parameters) at 8×16³, batch 1;
* ``large-16``: ``paper-large`` (1.0 B) at 8×16³, batch 1, forward only (its AdamW state needs ~16 GiB);
  not in the default run (``--cases large-16``);
* with ``--full``: ``base-24``/``large-24`` (8×24³) with training steps, and ``base-56``: the base forward at its
  real grid 8×56³ (fp32 vs bf16 only; about a minute per call on a 2-core CPU).

Weights are random (the zero-initialised output layers are re-drawn so that outputs are not zero). Variants of one
case share one model and are timed interleaved; the model is switched between memory formats outside the timed
region. On a CPU without native bf16 the autocast forward is ~40x slower than fp32, so there bf16 is only run
once, for the error, on the demo case (``--cpu-bf16`` times it everywhere). The bf16 error is ``max|v_bf16 - v_fp32|`` and the relative RMS error on the same inputs. Peak memory:
``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the peak RSS of a fresh subprocess that runs the variant
twice (includes the weights, and for training the AdamW state); by default only for the demo case
(``--memory-all`` for every case: each probe rebuilds the model in a new process).

Usage:
    python benchmarks/unet.py                      # demo + base-16, about 4 minutes on a 2-core CPU
    python benchmarks/unet.py --cases large-16 --no-train
    python benchmarks/unet.py --cases demo --repeats 5
    python benchmarks/unet.py --full --device cuda --compile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from _common import (
    add_common_args,
    log,
    max_rss_mib,
    model_config,
    print_table,
    random_model,
    setup,
    sync,
    write_result,
)

CASES = {
    "demo": ("demo", (24, 28, 24), 4, True),
    "base-16": ("paper-base", (16, 16, 16), 1, True),
    "large-16": ("paper-large", (16, 16, 16), 1, False),
    "base-24": ("paper-base", (24, 24, 24), 1, True),
    "large-24": ("paper-large", (24, 24, 24), 1, True),
    "base-56": ("paper-base", (56, 56, 56), 1, False),
}
DEFAULT_CASES = ("demo", "base-16")
FULL_CASES = ("demo", "base-16", "large-16", "base-24", "large-24", "base-56")


@dataclass
class Variant:
    """How one variant runs: memory format, autocast dtype, compiled or not."""

    name: str
    channels_last: bool = False
    autocast: torch.dtype | None = None
    compile: bool = False


def variants(device: torch.device, with_compile: bool, case: str, cpu_bf16: bool = False) -> list[Variant]:
    out = [Variant("fp32"), Variant("channels_last", channels_last=True)]
    if device.type == "cuda" or cpu_bf16:  # CPUs without native bf16 run autocast ~40x slower (see the docs)
        out.append(Variant("bf16", autocast=torch.bfloat16))
    if device.type == "cuda":
        out.append(Variant("bf16+channels_last", channels_last=True, autocast=torch.bfloat16))
    if with_compile:
        out.append(Variant("compile", compile=True))
    if case == "base-56":  # the real-size CPU pass is slow: only the precision comparison
        out = [v for v in out if v.name in ("fp32", "bf16")]
    return out


def make_inputs(cfg, grid, batch, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, *grid, generator=g)
    t = torch.rand(batch, generator=g)
    cond = {name: torch.rand(batch, 1, generator=g) for name in cfg.condition_names}
    target = torch.randn(batch, cfg.out_channels, *grid, generator=g)
    return x.to(device), t.to(device), {k: v.to(device) for k, v in cond.items()}, target.to(device)


class Runner:
    """One model, its optimiser and the callables of every variant."""

    def __init__(self, case: str, device: torch.device, with_compile: bool, train: bool) -> None:
        name, grid, batch, _ = CASES[case]
        self.cfg = model_config(name)
        self.device = device
        self.model = random_model(self.cfg).to(device)
        self.x, self.t, self.cond, self.target = make_inputs(self.cfg, grid, batch, device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-6) if train else None
        self.compiled = torch.compile(self.model) if with_compile else None
        self.format = torch.contiguous_format

    def prepare(self, v: Variant) -> None:
        fmt = torch.channels_last_3d if v.channels_last else torch.contiguous_format
        if fmt != self.format:
            self.model.to(memory_format=fmt)
            self.format = fmt

    def _net(self, v: Variant):
        return self.compiled if v.compile else self.model

    def _autocast(self, v: Variant):
        if v.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=v.autocast)

    def _x(self) -> torch.Tensor:
        return self.x.contiguous(memory_format=self.format)

    def forward(self, v: Variant) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad(), self._autocast(v):
            return self._net(v)(self._x(), self.t, self.cond).float()

    def train_step(self, v: Variant) -> float:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with self._autocast(v):
            out = self._net(v)(self._x(), self.t, self.cond)
        loss = torch.nn.functional.mse_loss(out.float(), self.target)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def time_variants(runner: Runner, vs: list[Variant], mode: str, repeats: int) -> dict[str, list[float]]:
    """Interleaved timings (one untimed warm-up round) of ``mode`` (``forward`` or ``train``) per variant."""
    fn = runner.forward if mode == "forward" else runner.train_step
    times: dict[str, list[float]] = {v.name: [] for v in vs}
    for rep in range(repeats + 1):
        for v in vs:
            runner.prepare(v)
            sync(runner.device)
            t0 = time.perf_counter()
            fn(v)
            sync(runner.device)
            if rep > 0:
                times[v.name].append(time.perf_counter() - t0)
    return times


def precision_error(runner: Runner) -> dict[str, float]:
    """bf16 autocast vs fp32 forward on the same inputs (contiguous format)."""
    runner.prepare(Variant("fp32"))
    ref = runner.forward(Variant("fp32"))
    sync(runner.device)
    t0 = time.perf_counter()
    low = runner.forward(Variant("bf16", autocast=torch.bfloat16))
    sync(runner.device)
    elapsed = time.perf_counter() - t0
    diff = low - ref
    return {
        "bf16_forward_s_once": elapsed,
        "bf16_max_abs_err": diff.abs().max().item(),
        "bf16_rel_rms_err": (diff.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item(),
        "fp32_output_rms": ref.pow(2).mean().sqrt().item(),
    }


def peak_memory_mib(
    case: str, v: Variant, mode: str, args: argparse.Namespace, device: torch.device
) -> float:
    """Peak memory of running the variant twice (CUDA: allocator peak; CPU: RSS of a fresh subprocess)."""
    if device.type == "cuda":
        runner = Runner(case, device, v.compile, mode == "train")
        runner.prepare(v)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):
            (runner.forward if mode == "forward" else runner.train_step)(v)
        return torch.cuda.max_memory_allocated(device) / 2**20
    cmd = [sys.executable, __file__, "--probe", case, v.name, mode, "--threads", str(args.threads)]
    cmd += ["--allocator", args.allocator]
    cmd += ["--compile"] if v.compile else []
    cmd += ["--cpu-bf16"] if args.cpu_bf16 else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mib"])


def probe(case: str, variant: str, mode: str, args: argparse.Namespace, device: torch.device) -> None:
    """Subprocess entry: run one variant twice and print the peak RSS as JSON."""
    v = {x.name: x for x in variants(device, args.compile, case, args.cpu_bf16)}[variant]
    runner = Runner(case, device, v.compile, mode == "train")
    runner.prepare(v)
    for _ in range(2):
        (runner.forward if mode == "forward" else runner.train_step)(v)
    sys.stdout.write(json.dumps({"peak_rss_mib": max_rss_mib()}) + "\n")


def run_case(case: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    name, grid, batch, can_train = CASES[case]
    modes = ["forward", "train"] if can_train and not args.no_train else ["forward"]
    vs = variants(device, args.compile, case, args.cpu_bf16)
    runner = Runner(case, device, args.compile, "train" in modes)
    params = sum(p.numel() for p in runner.model.parameters())
    check_bf16 = device.type == "cuda" or args.cpu_bf16 or case == "demo"
    err = precision_error(runner) if check_bf16 else {}
    repeats = 1 if case == "base-56" else args.repeats
    rows = []
    for mode in modes:
        log.info("unet %s %s: %s", case, mode, [v.name for v in vs])
        times = time_variants(runner, vs, mode, repeats)
        base = min(times["fp32"])
        for v in vs:
            best = min(times[v.name])
            row = {
                "case": case,
                "config": name,
                "grid": "x".join(map(str, grid)),
                "batch": batch,
                "params_M": params / 1e6,
                "mode": mode,
                "variant": v.name,
                "s_per_step": best,
                "median_s": sorted(times[v.name])[len(times[v.name]) // 2],
                "speedup_vs_fp32": base / best,
                "times_s": times[v.name],
            }
            if case == "demo" or args.memory_all:
                row["peak_mem_mib"] = peak_memory_mib(case, v, mode, args, device)
            rows.append(row)
    for row in rows:
        row.update(err)
    del runner
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, "unet")
    parser.set_defaults(repeats=2)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), help="default: demo base-16 large-16")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to warm up)")
    parser.add_argument("--no-train", action="store_true", help="forward passes only")
    parser.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="also time bf16 autocast on the CPU (very slow without native bf16)",
    )
    parser.add_argument(
        "--memory-all",
        action="store_true",
        help="peak memory for every case (default: the demo case only; a probe rebuilds the model)",
    )
    parser.add_argument("--probe", nargs=3, metavar=("CASE", "VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = setup(args)
    if args.probe:
        probe(*args.probe, args, device)
        return
    cases = args.cases or (FULL_CASES if args.full else DEFAULT_CASES)
    rows: list[dict] = []
    for case in cases:
        rows += run_case(case, args, device)
        # written after every case, so that a long run that is stopped keeps what it measured
        write_result(args.out, "unet", device, {"rows": rows, "compile_measured": bool(args.compile)})
    cols = ["case", "grid", "batch", "params_M", "mode", "variant", "s_per_step", "speedup_vs_fp32"]
    cols += ["peak_mem_mib"] if any("peak_mem_mib" in r for r in rows) else []
    print_table(rows, cols)
    print_table(
        [r for r in rows if r["variant"] == "fp32" and r["mode"] == "forward" and "bf16_max_abs_err" in r],
        ["case", "grid", "bf16_max_abs_err", "bf16_rel_rms_err", "fp32_output_rms", "bf16_forward_s_once"],
    )


if __name__ == "__main__":
    main()
