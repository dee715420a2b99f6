"""Haar DWT/IDWT: the one-pass transform of ``flowlet.wavelets`` against the dense-matrix transform of spec §1.

The dense baseline is written here as the official code does it: per axis a low-pass and a high-pass matrix
(``n/2 x n``, taps ±1/√2) applied as matrix products, so each axis costs O(n²) per line instead of O(n).
``flowlet.wavelets`` maps each 2×2×2 block to its 8 bands in one pass (a stride-2 ``conv3d`` with the 8 Haar
filters forward, an 8×8 matrix product and one interleaving copy back). Both run on the same input, interleaved;
the table gives the medians, the speed-up and the max abs difference.

Each call returns a fresh 22 MiB tensor at 112³ × 4, and with glibc's default allocator that memory is a new
``mmap`` every time: the page faults of touching it cost more than the transform itself on a VM (about 11,000
faults and 45 ms per ``dwt3d`` call on the 2-core reference machine). ``--allocator both`` (the default) therefore
runs every case twice in the same process: first with glibc's defaults, then after
``flowlet.runtime.tune_cpu_allocator()`` (what every ``flowlet-…`` command does at start-up), and reports both.

Usage:
    python benchmarks/haar.py                 # 56³ and 112³, batch 1, 4, 8 (about a minute on a 2-core CPU)
    python benchmarks/haar.py --full          # adds 224³
    python benchmarks/haar.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import resource

import torch
from _common import add_common_args, interleaved, log, print_table, setup, write_result
from torch import Tensor

from flowlet.runtime import allocator_tuned, tune_cpu_allocator
from flowlet.wavelets import dwt3d, idwt3d


def haar_matrices(n: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Dense ``(n/2, n)`` low-pass and high-pass analysis matrices of one axis."""
    low = torch.zeros(n // 2, n, device=device, dtype=dtype)
    high = torch.zeros(n // 2, n, device=device, dtype=dtype)
    rows = torch.arange(n // 2, device=device)
    s = 1.0 / math.sqrt(2.0)
    low[rows, 2 * rows] = s
    low[rows, 2 * rows + 1] = s
    high[rows, 2 * rows] = s
    high[rows, 2 * rows + 1] = -s
    return low, high


class DenseHaar:
    """The dense-matrix 3-D Haar transform (spec §1), with matrices cached per shape as the official code does."""

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[tuple[Tensor, Tensor], ...]] = {}

    def _mats(self, shape: tuple[int, int, int], x: Tensor) -> tuple[tuple[Tensor, Tensor], ...]:
        key = (shape, x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(haar_matrices(n, x.device, x.dtype) for n in shape)
        return self._cache[key]

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 1, D, H, W)`` -> ``(B, 8, D/2, H/2, W/2)`` in the band order of ``flowlet.wavelets``."""
        (ld, hd), (lh, hh), (lw, hw) = self._mats(tuple(x.shape[2:]), x)
        # W axis: right-multiply; H axis: left-multiply on (H, W) planes; D axis: left-multiply on (D, H*W).
        by_w = [x @ m.T for m in (lw, hw)]
        by_hw = [m @ y for m in (lh, hh) for y in by_w]  # order: (L,L) (L,H) (H,L) (H,H) in (h, w)
        out = []
        for md in (ld, hd):
            for y in by_hw:
                b, c, d, h, w = y.shape
                out.append((md @ y.reshape(b, c, d, h * w)).reshape(b, c, -1, h, w))
        return torch.cat(out, dim=1)

    def inverse(self, bands: Tensor) -> Tensor:
        """``(B, 8, d, h, w)`` -> ``(B, 1, 2d, 2h, 2w)`` with the transposed matrices."""
        b, _, d, h, w = bands.shape
        (ld, hd), (lh, hh), (lw, hw) = self._mats((2 * d, 2 * h, 2 * w), bands)
        parts = bands.split(1, dim=1)
        planes = []
        for j in range(4):  # undo the D axis for each (h, w) band pair
            y = ld.T @ parts[j].reshape(b, 1, d, h * w) + hd.T @ parts[4 + j].reshape(b, 1, d, h * w)
            planes.append(y.reshape(b, 1, 2 * d, h, w))
        by_w = [lh.T @ planes[k] + hh.T @ planes[2 + k] for k in range(2)]
        return by_w[0] @ lw + by_w[1] @ hw


class WdmOrderHaar(DenseHaar):
    """The same dense matrices applied in the order of the official code (adapted from WDM-3D, spec §1).

    Forward: H axis (left product), W axis (right product), then the D axis through ``transpose(2, 3)`` on each of
    the four (H, W) bands, giving a tuple of 8 non-contiguous bands that the dataset concatenates along channels.
    Inverse: the transposed steps in reverse (D through transposes, then W, then H). :class:`DenseHaar` does the
    same products with one large matrix product per axis and no transposes, which is faster; both are reported.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 1, D, H, W)`` -> ``(B, 8, D/2, H/2, W/2)``."""
        (ld, hd), (lh, hh), (lw, hw) = self._mats(tuple(x.shape[2:]), x)
        by_h = [m @ x for m in (lh, hh)]
        by_hw = [(y @ m.T).transpose(2, 3) for y in by_h for m in (lw, hw)]  # (B, C, H/2, D, W/2)
        bands = tuple((md @ y).transpose(2, 3) for md in (ld, hd) for y in by_hw)
        return torch.cat(bands, dim=1)

    def inverse(self, bands: Tensor) -> Tensor:
        """``(B, 8, d, h, w)`` -> ``(B, 1, 2d, 2h, 2w)``."""
        _, _, d, h, w = bands.shape
        (ld, hd), (lh, hh), (lw, hw) = self._mats((2 * d, 2 * h, 2 * w), bands)
        parts = [p.transpose(2, 3) for p in bands.split(1, dim=1)]
        by_hw = [(ld.T @ parts[k] + hd.T @ parts[4 + k]).transpose(2, 3) for k in range(4)]
        by_h = [by_hw[2 * k] @ lw + by_hw[2 * k + 1] @ hw for k in range(2)]
        return lh.T @ by_h[0] + hh.T @ by_h[1]


def page_faults(fn) -> int:
    """Minor page faults (first touches of fresh memory) taken by one call of ``fn``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def run_case(
    size: int, batch: int, device: torch.device, repeats: int, dense: DenseHaar, wdm: WdmOrderHaar
) -> dict:
    """Time the forward and inverse transforms of the three implementations at one size and batch."""
    x = torch.rand(batch, 1, size, size, size, device=device, generator=None) * 2 - 1
    z_ref = dwt3d(x)
    diffs = {
        "max_abs_diff_dwt": max((z_ref - impl.forward(x)).abs().max().item() for impl in (dense, wdm)),
        "max_abs_diff_idwt": max(
            (idwt3d(z_ref) - impl.inverse(z_ref)).abs().max().item() for impl in (dense, wdm)
        ),
    }
    timings = interleaved(
        {
            "ours_dwt": lambda: dwt3d(x),
            "dense_dwt": lambda: dense.forward(x),
            "wdm_dwt": lambda: wdm.forward(x),
            "ours_idwt": lambda: idwt3d(z_ref),
            "dense_idwt": lambda: dense.inverse(z_ref),
            "wdm_idwt": lambda: wdm.inverse(z_ref),
        },
        repeats,
        device,
    )
    med = {k: v["median_s"] for k, v in timings.items()}
    faults = {
        name: page_faults(fn)
        for name, fn in (("ours_dwt", lambda: dwt3d(x)), ("ours_idwt", lambda: idwt3d(z_ref)))
    }
    row: dict = {"size": size, "batch": batch}
    for op in ("dwt", "idwt"):
        row[f"ours_{op}_ms"] = 1e3 * med[f"ours_{op}"]
        row[f"dense_{op}_ms"] = 1e3 * med[f"dense_{op}"]
        row[f"wdm_{op}_ms"] = 1e3 * med[f"wdm_{op}"]
        row[f"{op}_speedup"] = med[f"dense_{op}"] / med[f"ours_{op}"]
        row[f"{op}_speedup_wdm"] = med[f"wdm_{op}"] / med[f"ours_{op}"]
    row.update({f"ours_{op}_faults": faults[f"ours_{op}"] for op in ("dwt", "idwt")})
    return {**row, **diffs, "timings": timings}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, "haar", allocator_both=True)
    parser.add_argument("--sizes", type=int, nargs="+", help="cube sizes (default 56 112, +224 with --full)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.set_defaults(repeats=5)
    args = parser.parse_args(argv)
    device = setup(args)
    torch.manual_seed(0)
    sizes = args.sizes or ([56, 112, 224] if args.full else [56, 112])
    dense, wdm = DenseHaar(), WdmOrderHaar()
    passes = ["default", "tuned"] if args.allocator == "both" else [args.allocator]
    rows = []
    for allocator in passes:
        if allocator == "tuned" and not tune_cpu_allocator():
            log.warning(
                "allocator could not be tuned (%s); the 'tuned' pass runs with the defaults",
                allocator_tuned(),
            )
        for size in sizes:
            for batch in args.batches:
                log.info("haar %d^3 batch %d, %s allocator", size, batch, allocator)
                rows.append(
                    {"allocator": allocator, **run_case(size, batch, device, args.repeats, dense, wdm)}
                )
    cols = [c for c in rows[0] if c != "timings"]
    print_table(rows, cols)
    verdict = {
        "criterion": "DWT and IDWT each >= 10x faster than dense at 112^3 batch 4, max abs diff <= 1e-5",
        "by_allocator": {},
    }
    for r in rows:
        if r["size"] == 112 and r["batch"] == 4:
            worst = max(r["max_abs_diff_dwt"], r["max_abs_diff_idwt"])
            verdict["by_allocator"][r["allocator"]] = {
                baseline: {
                    "dwt_speedup": r[f"dwt_speedup{suffix}"],
                    "idwt_speedup": r[f"idwt_speedup{suffix}"],
                    "max_abs_diff": worst,
                    "passed": min(r[f"dwt_speedup{suffix}"], r[f"idwt_speedup{suffix}"]) >= 10
                    and worst <= 1e-5,
                }
                for baseline, suffix in (("dense", ""), ("wdm_order", "_wdm"))
            }
    if verdict["by_allocator"]:
        log.info("acceptance: %s", verdict)
    else:
        verdict = None
    write_result(args.out, "haar", device, {"rows": rows, "acceptance": verdict})


if __name__ == "__main__":
    main()
