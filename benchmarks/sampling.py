"""Generation throughput: seconds per volume and volumes per hour at batch sizes 1, 2, 4, 8 vs batch 1.

The model is the demo configuration (``configs/flowlet/demo.yaml``, image 48×56×48, Haar grid 8×24×28×24): the
shipped ``flowlet/assets/demo-4mm.pt`` when it exists, else random weights (timing does not depend on the values).
Every batch size generates the same ``--volumes`` volumes (noise -> ``--steps`` solver steps -> IDWT -> crop), and
the batch sizes (and thread counts with ``--threads-list``) are timed interleaved. The cost of one volume scales
linearly with the number of network evaluations, so the table also extrapolates to the official 100 Euler steps.

Usage:
    python benchmarks/sampling.py                          # about 2 minutes on a 2-core CPU
    python benchmarks/sampling.py --threads-list 1 2       # is batching or threading the better use of cores?
    python benchmarks/sampling.py --device cuda --volumes 32 --batches 1 4 8 16 32
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from _common import add_common_args, log, model_config, print_table, random_model, setup, sync, write_result

from flowlet.checkpoint import FlowLetBundle, load_bundle
from flowlet.export import decode_and_export
from flowlet.sampling import SamplingConfig, generate_wavelets, sample_seeds

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "flowlet" / "assets" / "demo-4mm.pt"


def demo_bundle(device: torch.device) -> tuple[FlowLetBundle, str]:
    """The shipped demo checkpoint, or a random-weight model of the demo configuration."""
    if DEMO_CHECKPOINT.is_file():
        return load_bundle(DEMO_CHECKPOINT, device=device), str(DEMO_CHECKPOINT)
    cfg = model_config("demo")
    bundle = FlowLetBundle(
        model=random_model(cfg).to(device),
        model_config=cfg,
        condition_ranges={"Age": (20.0, 90.0)},
        model_input_size=(48, 56, 48),
        save_size=(46, 55, 46),
        path_name="rectified",
        num_flow_steps=None,
        source_format="flowlet",
    )
    return bundle, "random weights (demo config)"


def generate(bundle: FlowLetBundle, n: int, batch: int, steps: int, device: torch.device) -> None:
    """``n`` volumes end to end (noise, Euler solve, decode and crop), ``batch`` per network call."""
    cfg = SamplingConfig(solver="euler", num_steps=steps, batch_size=batch, device=str(device))
    lo, hi = bundle.condition_ranges.get("Age", (20.0, 90.0))
    ages = [lo + (hi - lo) * (i + 0.5) / n for i in range(n)]
    wavelets = generate_wavelets(bundle, ages, sample_seeds(0, n), cfg, progress=False)
    decode_and_export(wavelets, bundle.save_size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, "sampling")
    parser.set_defaults(repeats=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--volumes", type=int, help="volumes per timed run (default 8; 16 with --full)")
    parser.add_argument("--steps", type=int, help="Euler steps per volume (default 4; 20 with --full)")
    parser.add_argument(
        "--threads-list", type=int, nargs="+", help="also interleave these torch thread counts"
    )
    args = parser.parse_args(argv)
    device = setup(args)
    args.volumes = args.volumes or (16 if args.full else 8)
    args.steps = args.steps or (20 if args.full else 4)
    logging.getLogger("flowlet").setLevel(logging.WARNING)
    bundle, source = demo_bundle(device)
    threads_list = args.threads_list or [args.threads]
    combos = [(th, b) for th in threads_list for b in args.batches]
    times: dict[tuple[int, int], list[float]] = {c: [] for c in combos}
    generate(bundle, 1, 1, 1, device)  # warm-up: allocator, kernels
    for rep in range(args.repeats):
        for th, b in combos:
            torch.set_num_threads(th)
            log.info("sampling rep %d threads %d batch %d", rep, th, b)
            sync(device)
            t0 = time.perf_counter()
            generate(bundle, args.volumes, b, args.steps, device)
            sync(device)
            times[(th, b)].append(time.perf_counter() - t0)
    ref = min(times[(threads_list[0], args.batches[0])])
    rows = []
    for th, b in combos:
        best = min(times[(th, b)])
        per_vol = best / args.volumes
        per_vol_100 = per_vol * 100 / args.steps
        rows.append(
            {
                "threads": th,
                "batch": b,
                "s_per_volume": per_vol,
                "s_per_nfe_per_volume": per_vol / args.steps,
                "volumes_per_hour_at_100_nfe": 3600.0 / per_vol_100,
                "throughput_vs_batch1": ref / best,
                "times_s": times[(th, b)],
            }
        )
    print_table(rows, [k for k in rows[0] if k != "times_s"])
    best_batched = max(r["throughput_vs_batch1"] for r in rows if r["batch"] > 1)
    acceptance = {
        "criterion": "batched throughput >= 1.5x batch 1 at the demo config",
        "best_batched_ratio": best_batched,
        "passed": best_batched >= 1.5,
    }
    log.info("acceptance: %s", acceptance)
    payload = {
        "model": source,
        "steps": args.steps,
        "volumes": args.volumes,
        "rows": rows,
        "acceptance": acceptance,
    }
    write_result(args.out, "sampling", device, payload)


if __name__ == "__main__":
    main()
