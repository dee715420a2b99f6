"""glibc's default allocator vs ``flowlet.runtime.tune_cpu_allocator`` on real workloads (CPU).

The allocator is a process-wide setting, so every (workload, setting) pair runs in a fresh subprocess, and the
subprocesses alternate ``default, tuned, default, tuned, ...`` for ``--rounds`` rounds. Each subprocess builds the
workload, runs it once untimed and then ``--repeats`` timed times, and reports the median seconds per call, the
minor page faults per call (first touches of fresh memory) and its peak resident size.

Workloads:
    haar       dwt3d + idwt3d of 4 volumes of 112³ (the codec at the size of a full-resolution batch)
    unet-demo  U-Net forward of the demo configuration, batch 4 (one sampling step of flowlet-generate)
    unet-base  U-Net forward of the paper's base model (356 M parameters) at the full 56³ grid, batch 1
               (about a minute per call on a 2-core CPU; only with --full or --workloads unet-base)

Usage:
    python benchmarks/allocator.py                      # haar and unet-demo, about 2 minutes
    python benchmarks/allocator.py --full --threads 2   # adds the full-size forward (about 15 minutes)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from _common import (
    add_common_args,
    log,
    max_rss_mib,
    model_config,
    print_table,
    random_model,
    setup,
    write_result,
)

from flowlet.runtime import allocator_tuned

WORKLOADS = ("haar", "unet-demo", "unet-base")


def build(workload: str):
    """The callable to time for one workload (inputs made once, outside the timing)."""
    if workload == "haar":
        from flowlet.wavelets import dwt3d, idwt3d

        x = torch.rand(4, 1, 112, 112, 112, generator=torch.Generator().manual_seed(0))
        return lambda: idwt3d(dwt3d(x))
    from unet import make_inputs

    name, grid, batch = {
        "unet-demo": ("demo", (24, 28, 24), 4),
        "unet-base": ("paper-base", (56, 56, 56), 1),
    }[workload]
    cfg = model_config(name)
    model = random_model(cfg).eval()
    x, t, cond, _ = make_inputs(cfg, grid, batch, torch.device("cpu"))

    def forward():
        with torch.no_grad():
            return model(x, t, cond)

    return forward


def probe(workload: str, repeats: int) -> dict:
    """Subprocess entry: time one workload under the allocator setting of this process."""
    fn = build(workload)
    fn()
    seconds, faults = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "faults_per_call": statistics.median(faults),
        "peak_rss_mib": max_rss_mib(),
        "allocator": allocator_tuned(),
    }


def run_probe(workload: str, allocator: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--probe", workload, "--allocator", allocator]
    cmd += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"probe {workload}/{allocator} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, "allocator")
    parser.add_argument(
        "--workloads", nargs="+", choices=WORKLOADS, help="default: haar unet-demo (+unet-base)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="default/tuned subprocess pairs per workload")
    parser.add_argument("--probe", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = setup(args)
    if args.probe:
        sys.stdout.write(json.dumps(probe(args.probe, args.repeats)) + "\n")
        return
    if device.type != "cpu":
        log.info("allocator: a CPU benchmark, nothing to measure on %s (run it with --device cpu)", device)
        return
    workloads = args.workloads or (list(WORKLOADS) if args.full else ["haar", "unet-demo"])
    rows = []
    for workload in workloads:
        runs: dict[str, list[dict]] = {"default": [], "tuned": []}
        for r in range(args.rounds):
            for allocator in ("default", "tuned"):
                log.info("%s, %s allocator, round %d/%d", workload, allocator, r + 1, args.rounds)
                runs[allocator].append(run_probe(workload, allocator, args))
        row: dict = {"workload": workload, "threads": args.threads}
        for allocator, got in runs.items():
            row[f"{allocator}_s"] = statistics.median(s for g in got for s in g["seconds"])
            row[f"{allocator}_faults"] = statistics.median(g["faults_per_call"] for g in got)
            row[f"{allocator}_rss_mib"] = max(g["peak_rss_mib"] for g in got)
        row["speedup"] = row["default_s"] / row["tuned_s"]
        row["runs"] = runs
        rows.append(row)
        write_result(args.out, "allocator", device, {"rows": rows})
    print_table(rows, [c for c in rows[0] if c != "runs"])


if __name__ == "__main__":
    main()
