"""How U-Net cost grows with the wavelet grid, the batch and the model width; power-law fits and a PNG.

Three sweeps of a small U-Net (the demo architecture, ``configs/flowlet/demo.yaml``):

* grid: 8×16³ -> 8×24³ -> 8×32³ -> 8×56³ (the paper's grid), batch 1;
* batch: 1, 2, 4, 8 at 8×16³;
* width: ``model_channels`` 8, 12, 16, 24 at 8×16³ (parameters grow ~ width²).

Per point: forward time (no_grad, best of ``--repeats``), training-step time (forward + backward) and the bytes of
tensors autograd saves for the backward pass (the activation memory of training, counted with
``saved_tensors_hooks``; deterministic, unlike RSS on a shared machine). The points of one sweep are timed
interleaved. ``time ~ a · x^b`` is fitted by least squares in log-log space. With ``--full`` the grid sweep uses the
``paper-base`` U-Net (356 M parameters) instead, forward only.

Usage:
    python benchmarks/cost_curves.py                           # about 1-2 minutes on a 2-core CPU
    python benchmarks/cost_curves.py --png docs/cost_curves.png
    python benchmarks/cost_curves.py --full --device cuda
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import add_common_args, log, model_config, print_table, random_model, setup, sync, write_result

ROOT = Path(__file__).resolve().parents[1]


def saved_bytes(model, x, t, cond) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one training forward."""
    total = 0
    seen: set[int] = set()

    def pack(tensor):
        nonlocal total
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x, t, cond)
    return total


def make_point(cfg, grid: int, batch: int, device: torch.device):
    model = random_model(cfg).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, grid, grid, grid, generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    cond = {n: torch.rand(batch, 1, generator=g).to(device) for n in cfg.condition_names}
    return model, x, t, cond


def forward(p) -> None:
    model, x, t, cond = p
    model.eval()
    with torch.no_grad():
        model(x, t, cond)


def train_step(p) -> None:
    model, x, t, cond = p
    model.train()
    model.zero_grad(set_to_none=True)
    model(x, t, cond).float().pow(2).mean().backward()


def sweep(name: str, points: dict, device: torch.device, repeats: int, train: bool) -> list[dict]:
    """Interleaved forward (and train-step) timings of every point of one sweep."""
    times = {k: {"forward": [], "train": []} for k in points}
    for rep in range(repeats + 1):
        for key, (p, _) in points.items():
            for mode, fn in (("forward", forward), ("train", train_step)):
                if mode == "train" and not train:
                    continue
                sync(device)
                t0 = time.perf_counter()
                fn(p)
                sync(device)
                if rep:
                    times[key][mode].append(time.perf_counter() - t0)
    rows = []
    for key, (p, meta) in points.items():
        row = {"sweep": name, **meta, "forward_s": min(times[key]["forward"])}
        if train:
            row["train_step_s"] = min(times[key]["train"])
            row["saved_activation_mib"] = saved_bytes(*p) / 2**20
        rows.append(row)
    return rows


def fit_power(x: list[float], y: list[float]) -> dict[str, float]:
    """``y = a x^b`` by least squares on logs."""
    b, log_a = np.polyfit(np.log(x), np.log(y), 1)
    return {"a": float(np.exp(log_a)), "b": float(b)}


def plot(rows: list[dict], fits: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("grid", "voxels", "wavelet-grid voxels"),
        ("batch", "batch", "batch"),
        ("width", "params", "parameters"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (sweep_name, xkey, xlabel) in zip(axes, panels):
        pts = [r for r in rows if r["sweep"] == sweep_name]
        if not pts:
            ax.set_visible(False)
            continue
        xs = np.array([r[xkey] for r in pts], dtype=float)
        for ykey, style in (("forward_s", "o-"), ("train_step_s", "s--")):
            if ykey in pts[0]:
                fit = fits.get(f"{sweep_name}:{ykey}")
                label = ykey if fit is None else f"{ykey} ~ x^{fit['b']:.2f}"
                ax.loglog(xs, [r[ykey] for r in pts], style, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds")
        ax.set_title(f"{sweep_name} sweep")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    log.info("wrote %s", png)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, "cost_curves")
    parser.set_defaults(repeats=2)
    parser.add_argument("--png", default=str(ROOT / "docs" / "cost_curves.png"), help="plot file")
    args = parser.parse_args(argv)
    device = setup(args)
    demo = model_config("demo")
    rows = []
    grid_cfg = model_config("paper-base") if args.full else demo
    grids = {g: None for g in (16, 24, 32, 56)}
    for g in grids:
        grids[g] = (make_point(grid_cfg, g, 1, device), {"grid": g, "batch": 1, "voxels": g**3})
    log.info("grid sweep")
    rows += sweep("grid", grids, device, 1 if args.full else args.repeats, train=not args.full)
    grids.clear()
    batches = {b: (make_point(demo, 16, b, device), {"grid": 16, "batch": b}) for b in (1, 2, 4, 8)}
    log.info("batch sweep")
    rows += sweep("batch", batches, device, args.repeats, train=True)
    batches.clear()
    widths = {}
    for w in (8, 12, 16, 24):
        cfg = model_config("demo", model_channels=w, norm_num_groups=4)
        p = make_point(cfg, 16, 1, device)
        widths[w] = (
            p,
            {"grid": 16, "batch": 1, "width": w, "params": sum(q.numel() for q in p[0].parameters())},
        )
    log.info("width sweep")
    rows += sweep("width", widths, device, args.repeats, train=True)
    fits = {}
    for sweep_name, xkey in (("grid", "voxels"), ("batch", "batch"), ("width", "params")):
        pts = [r for r in rows if r["sweep"] == sweep_name]
        for ykey in ("forward_s", "train_step_s", "saved_activation_mib"):
            if ykey in pts[0]:
                fits[f"{sweep_name}:{ykey}"] = fit_power([r[xkey] for r in pts], [r[ykey] for r in pts])
    print_table(rows, list(dict.fromkeys(k for r in rows for k in r)))
    print_table([{"fit": k, **v} for k, v in fits.items()])
    plot(rows, fits, Path(args.png))
    write_result(args.out, "cost_curves", device, {"rows": rows, "fits": fits, "model": grid_cfg.to_dict()})


if __name__ == "__main__":
    main()
