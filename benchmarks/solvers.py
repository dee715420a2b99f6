"""Solver accuracy vs cost: error of euler / heun / midpoint / rk4 at k network evaluations vs a fine RK4 reference.

For each model, one batch of noise is integrated with a 400-step RK4 (1600 evaluations) as the reference. Every
(solver, time grid, k) with k in {4, 8, 10, 16, 20, 40, 100} (k divisible by the solver's evaluations per step)
starts from the same noise. Errors:

* ``wavelet_rmse``: RMSE of the final Haar state. The IDWT is orthonormal, so this is also the RMSE of the
  unclamped image;
* ``image_rmse``: RMSE of the exported volume (IDWT, clamp, crop, ``(x+1)/2``, intensities in [0, 1]).

The summary answers: which configuration reaches the Euler-100 error with the fewest evaluations?

Models: the official-format fixture (``tests/fixtures/official``, random weights, 16³ grid), the shipped demo
checkpoint ``flowlet/assets/demo-4mm.pt`` if it exists, and any ``--checkpoint`` given.

Usage:
    python benchmarks/solvers.py                              # about 6 minutes on a 2-core CPU
    python benchmarks/solvers.py --checkpoint runs/demo-4mm/checkpoints/best.pt --grids uniform
    python benchmarks/solvers.py --skip-fixture --grids uniform --reference-steps 200   # demo model, ~8 min
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from _common import add_common_args, log, print_table, setup, write_result

from flowlet.checkpoint import FlowLetBundle, load_bundle
from flowlet.export import decode_and_export
from flowlet.guidance import ModelVelocity
from flowlet.sampling import initial_noise, normalize_conditions, sample_seeds
from flowlet.solvers import SOLVERS, get_solver, get_time_grid

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "official" / "model.pth"
DEMO_CHECKPOINT = ROOT / "flowlet" / "assets" / "demo-4mm.pt"
NFES = (4, 8, 10, 16, 20, 40, 100)


def solve(
    bundle: FlowLetBundle, velocity, noise, conditions, solver: str, grid: str, steps: int
) -> torch.Tensor:
    with torch.no_grad():
        return get_solver(solver).solve(velocity, noise, get_time_grid(grid, steps), conditions=conditions).x


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def study(bundle: FlowLetBundle, label: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """All (solver, grid, k) errors of one model against its RK4 reference."""
    size = tuple(int(s) for s in bundle.model_input_size)
    shape = (bundle.model_config.in_channels, *(s // 2 for s in size))
    n = args.samples
    noise = initial_noise(sample_seeds(args.seed, n), shape).to(device)
    lo, hi = bundle.condition_ranges.get("Age", (20.0, 80.0))
    ages = [lo + (hi - lo) * (i + 0.5) / n for i in range(n)]
    names = tuple(bundle.model_config.condition_names)
    conditions = None
    if names:  # the middle of each condition's training range (spread over the samples for Age)
        values = {name: [sum(bundle.condition_ranges[name]) / 2] * n for name in names}
        values.update({"Age": ages} if "Age" in names else {})
        conditions = {
            k: v.to(device) for k, v in normalize_conditions(values, bundle.condition_ranges).items()
        }
    velocity = ModelVelocity(bundle.model.to(device).eval())
    save = bundle.save_size or size
    t0 = time.perf_counter()
    ref = solve(bundle, velocity, noise, conditions, "rk4", "uniform", args.reference_steps)
    per_nfe = (time.perf_counter() - t0) / (4 * args.reference_steps)
    ref_img = decode_and_export(ref.cpu(), save)
    log.info("%s: reference done (%.1f ms per evaluation of a batch of %d)", label, 1e3 * per_nfe, n)
    rows = []
    for grid in args.grids:
        for name in args.solvers:
            per_step = SOLVERS[name].evals_per_step
            for k in args.nfes:
                if k % per_step:
                    continue
                x = solve(bundle, velocity, noise, conditions, name, grid, k // per_step)
                img = decode_and_export(x.cpu(), save)
                rows.append(
                    {
                        "model": label,
                        "solver": name,
                        "grid": grid,
                        "nfe": k,
                        "steps": k // per_step,
                        "wavelet_rmse": rmse(x, ref),
                        "image_rmse": rmse(torch.from_numpy(img), torch.from_numpy(ref_img)),
                        "s_per_volume_cpu": per_nfe * k / n,
                    }
                )
    return rows


def summarise(rows: list[dict], label: str) -> dict:
    """The Euler-100 error and the cheapest configurations that reach it (wavelet RMSE)."""
    mine = [r for r in rows if r["model"] == label]
    target = next(
        (r for r in mine if r["solver"] == "euler" and r["grid"] == "uniform" and r["nfe"] == 100), None
    )
    if target is None:
        return {"model": label, "note": "euler/uniform/100 was not run; no Euler-100 level to compare with"}
    reach = sorted(
        (r for r in mine if r["wavelet_rmse"] <= target["wavelet_rmse"]),
        key=lambda r: (r["nfe"], r["wavelet_rmse"]),
    )
    best = reach[0] if reach else None
    return {
        "model": label,
        "euler100_wavelet_rmse": target["wavelet_rmse"],
        "euler100_image_rmse": target["image_rmse"],
        "cheapest_reaching_euler100": None
        if best is None
        else {k: best[k] for k in ("solver", "grid", "nfe")},
        "all_reaching_at_min_nfe": [
            {k: r[k] for k in ("solver", "grid", "nfe", "wavelet_rmse")}
            for r in reach
            if best and r["nfe"] == best["nfe"]
        ],
        "passed": best is not None and best["nfe"] <= 20,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, "solvers")
    parser.add_argument(
        "--checkpoint", nargs="*", default=[], help="more bundles to study (toolkit or official)"
    )
    parser.add_argument("--solvers", nargs="+", default=["euler", "heun", "midpoint", "rk4"])
    parser.add_argument("--grids", nargs="+", default=["uniform", "shifted", "cosine"])
    parser.add_argument("--nfes", type=int, nargs="+", default=list(NFES))
    parser.add_argument("--reference-steps", type=int, default=400, help="RK4 steps of the reference")
    parser.add_argument("--samples", type=int, help="volumes per model (default 2; 8 with --full)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-fixture", action="store_true", help="only the demo checkpoint and --checkpoint"
    )
    parser.add_argument("--skip-demo", action="store_true", help="leave out flowlet/assets/demo-4mm.pt")
    args = parser.parse_args(argv)
    device = setup(args)
    args.samples = args.samples or (8 if args.full else 2)
    logging.getLogger("flowlet").setLevel(logging.ERROR)
    models = [] if args.skip_fixture else [("fixture", FIXTURE)]
    if DEMO_CHECKPOINT.is_file() and not args.skip_demo:
        models.append(("demo-4mm", DEMO_CHECKPOINT))
    models += [(Path(p).stem, Path(p)) for p in args.checkpoint]
    rows, summaries = [], []
    for label, path in models:
        bundle = load_bundle(path, device=device)
        rows += study(bundle, label, args, device)
        summaries.append(summarise(rows, label))
    print_table(rows)
    for s in summaries:
        log.info("summary: %s", s)
    write_result(
        args.out,
        "solvers",
        device,
        {"rows": rows, "summaries": summaries, "reference": f"rk4 x {args.reference_steps} steps"},
    )


if __name__ == "__main__":
    main()
