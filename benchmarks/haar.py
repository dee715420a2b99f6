"""Haar DWT/IDWT: the one-pass transform of ``flowlet.wavelets`` against the dense-matrix transform of spec §1.

The dense baseline is written here as the official code does it: per axis a low-pass and a high-pass matrix
(``n/2 x n``, taps ±1/√2) applied as matrix products, so each axis costs O(n²) per line instead of O(n).
``flowlet.wavelets`` maps each 2×2×2 block to its 8 bands in one pass (a stride-2 ``conv3d`` with the 8 Haar
filters forward, an 8×8 matrix product and a reshape back). Both run on the same input, interleaved; the table
gives the medians, the speed-up and the max abs difference.

Usage:
    python benchmarks/haar.py                 # 56³ and 112³, batch 1, 4, 8 (about a minute on a 2-core CPU)
    python benchmarks/haar.py --full          # adds 224³
    python benchmarks/haar.py --device cuda
"""

from __future__ import annotations

import argparse
import math

import torch
from _common import add_common_args, interleaved, log, print_table, setup, write_result
from torch import Tensor

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


def run_case(size: int, batch: int, device: torch.device, repeats: int, dense: DenseHaar) -> dict:
    """Time the forward and inverse transforms of both implementations at one size and batch."""
    x = torch.rand(batch, 1, size, size, size, device=device, generator=None) * 2 - 1
    z_ref = dwt3d(x)
    z_dense = dense.forward(x)
    fwd_diff = (z_ref - z_dense).abs().max().item()
    inv_diff = (idwt3d(z_ref) - dense.inverse(z_ref)).abs().max().item()
    timings = interleaved(
        {
            "ours_dwt": lambda: dwt3d(x),
            "dense_dwt": lambda: dense.forward(x),
            "ours_idwt": lambda: idwt3d(z_ref),
            "dense_idwt": lambda: dense.inverse(z_ref),
        },
        repeats,
        device,
    )
    med = {k: v["median_s"] for k, v in timings.items()}
    return {
        "size": size,
        "batch": batch,
        "ours_dwt_ms": 1e3 * med["ours_dwt"],
        "dense_dwt_ms": 1e3 * med["dense_dwt"],
        "dwt_speedup": med["dense_dwt"] / med["ours_dwt"],
        "ours_idwt_ms": 1e3 * med["ours_idwt"],
        "dense_idwt_ms": 1e3 * med["dense_idwt"],
        "idwt_speedup": med["dense_idwt"] / med["ours_idwt"],
        "max_abs_diff_dwt": fwd_diff,
        "max_abs_diff_idwt": inv_diff,
        "timings": timings,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, "haar")
    parser.add_argument("--sizes", type=int, nargs="+", help="cube sizes (default 56 112, +224 with --full)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.set_defaults(repeats=5)
    args = parser.parse_args(argv)
    device = setup(args)
    torch.manual_seed(0)
    sizes = args.sizes or ([56, 112, 224] if args.full else [56, 112])
    dense = DenseHaar()
    rows = []
    for size in sizes:
        for batch in args.batches:
            log.info("haar %d^3 batch %d", size, batch)
            rows.append(run_case(size, batch, device, args.repeats, dense))
    cols = [c for c in rows[0] if c != "timings"]
    print_table(rows, cols)
    acceptance = [r for r in rows if r["size"] == 112 and r["batch"] == 4]
    verdict = None
    if acceptance:
        r = acceptance[0]
        verdict = {
            "criterion": "DWT and IDWT each >= 10x faster than dense at 112^3 batch 4, max abs diff <= 1e-5",
            "dwt_speedup": r["dwt_speedup"],
            "idwt_speedup": r["idwt_speedup"],
            "max_abs_diff": max(r["max_abs_diff_dwt"], r["max_abs_diff_idwt"]),
            "passed": min(r["dwt_speedup"], r["idwt_speedup"]) >= 10
            and max(r["max_abs_diff_dwt"], r["max_abs_diff_idwt"]) <= 1e-5,
        }
        log.info("acceptance: %s", verdict)
    write_result(args.out, "haar", device, {"rows": rows, "acceptance": verdict})


if __name__ == "__main__":
    main()
