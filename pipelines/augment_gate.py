"""The quality gate of ``flowlet-augment``: reject synthetic brains that do not look their requested age.

Two checks, each optional: a brain-age model trained on real data (``--gate-bap``: the bias-corrected predicted age
must lie within a tolerance of the requested age) and the volumes of a few structures against their age trend in a
real reference cohort (``--gate-volumes``). A rejected brain is generated again from a derived seed; the decisions
are recorded by :mod:`flowlet.augment.gate` in ``gate.tsv`` and ``rejections.tsv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.arguments import bounded_int, finite_float

if TYPE_CHECKING:
    from pipelines.augment import AugmentOptions


def add_gate_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--gate-*`` flags: reject synthetic brains that do not look their requested age, and resample."""
    g = p.add_argument_group(
        "quality gate (optional; every rejection is recorded in gate.tsv and rejections.tsv)"
    )
    g.add_argument("--gate-bap", help="brain-age checkpoint trained on real data (best.pt of bap-train)")
    g.add_argument(
        "--gate-age-tolerance",
        type=finite_float(0, 120, low_open=True),
        default=10.0,
        help="reject when |predicted − requested age| exceeds this many years (default 10)",
    )
    g.add_argument(
        "--gate-volumes",
        help="real reference cohort: reject when a region volume (lateral ventricles, total GM, WM) is off its "
        "age trend in this cohort by more than --gate-volume-tolerance residual SDs",
    )
    g.add_argument(
        "--gate-volume-tolerance",
        type=finite_float(0, 100, low_open=True),
        default=3.0,
        help="tolerance of --gate-volumes in SDs of the reference cohort around its age trend (default 3)",
    )
    g.add_argument(
        "--gate-max-tries",
        type=bounded_int(1, 100),
        default=3,
        help="generations per brain at most (default 3)",
    )
    g.add_argument(
        "--gate-max-reject-fraction",
        type=finite_float(0, 1),
        default=0.5,
        help="stop with an error when more than this share of the generated brains is rejected (default 0.5)",
    )


def gate_options(args: argparse.Namespace) -> dict:
    """The gate fields of :class:`AugmentOptions` from parsed arguments."""
    return {
        "gate_bap": args.gate_bap,
        "gate_age_tolerance": args.gate_age_tolerance,
        "gate_volumes": args.gate_volumes,
        "gate_volume_tolerance": args.gate_volume_tolerance,
        "gate_max_tries": args.gate_max_tries,
        "gate_max_reject_fraction": args.gate_max_reject_fraction,
    }


def gate_settings(options: AugmentOptions) -> dict | None:
    """The gate's settings recorded in ``dataset_description.json`` (None without a gate)."""
    if not (options.gate_bap or options.gate_volumes):
        return None
    from flowlet.data.io import sha256_file

    return {
        "bap": Path(options.gate_bap).name if options.gate_bap else None,
        "bap_sha256": sha256_file(options.gate_bap) if options.gate_bap else None,
        "age_tolerance_years": options.gate_age_tolerance if options.gate_bap else None,
        "volumes_reference": str(options.gate_volumes) if options.gate_volumes else None,
        "volume_tolerance_sd": options.gate_volume_tolerance if options.gate_volumes else None,
        "max_tries": options.gate_max_tries,
        "max_reject_fraction": options.gate_max_reject_fraction,
    }


def build_gate(options: AugmentOptions, affine):
    """The :class:`flowlet.augment.gate.Gate` of ``options`` (None without ``--gate-bap``/``--gate-volumes``)."""
    from flowlet.augment.gate import Gate

    checks = []
    if options.gate_bap:
        checks.append(_age_check(options.gate_bap, options.gate_age_tolerance))
    if options.gate_volumes:
        checks.append(_volume_check(options.gate_volumes, options.gate_volume_tolerance, affine))
    if not checks:
        return None

    def check(volumes, ages):
        decisions = [c(volumes, ages) for c in checks]
        return ["; ".join(r for r in reasons if r) or None for reasons in zip(*decisions)]

    return Gate(check, max_tries=options.gate_max_tries, max_reject_fraction=options.gate_max_reject_fraction)


def _age_check(checkpoint: str, tolerance: float):
    """Reject volumes whose (bias-corrected) predicted age is more than ``tolerance`` years off."""
    from bap.checkpoint import load_model
    from bap.predict import predict_arrays

    bap_model = load_model(checkpoint)

    def check(volumes, ages):
        pred = predict_arrays(
            bap_model, volumes, what=f"--gate-bap {checkpoint}: the synthetic brains"
        ).corrected
        return [
            None
            if abs(p - a) <= tolerance
            else f"predicted age {p:.1f} for requested {a:.1f} (|gap| > {tolerance:g} years)"
            for p, a in zip(pred, ages)
        ]

    return check


_GATE_STRUCTURES = ("lateral_ventricles", "total_gm", "total_wm")


def _volume_check(reference: str, tolerance: float, affine):
    """Reject volumes whose structures are off the reference cohort's age trend by > ``tolerance`` residual SDs.

    The trend is quadratic in age with at least 10 reference images (linear below); the SD is that of the reference
    images around it, so the tolerance is in the units of the real between-subject spread.
    """
    import numpy as np

    from analysis.evaluation import measure_cohort, usable_groups
    from analysis.fidelity import DEFAULT_STRUCTURES, structure_table
    from analysis.region_volumes import combine_regions, region_tissue_table
    from flowlet.data.nifti import Volume
    from pipelines.eval.common import build_volumetrics, cohort_table, load_config

    structures = {k: DEFAULT_STRUCTURES[k] for k in _GATE_STRUCTURES}
    config = load_config(voxel_size=float(abs(np.asarray(affine)[0, 0])))
    vol = build_volumetrics(config, "none", False)
    groups = usable_groups(config.combined_regions, set(vol.region_names_.values()))  # measure_cohort's rule
    real = structure_table(
        measure_cohort(cohort_table(reference, None), vol, combined_regions=groups, features=False,
                       progress=False).volumes,
        structures,
    )  # fmt: skip
    trends = {}
    for name, part in real.groupby("structure"):
        degree = 2 if len(part) >= 10 else 1
        if len(part) < degree + 3:
            raise ValueError(
                f"--gate-volumes {reference}: {len(part)} images are too few for an age trend (>= 4)"
            )
        trend = np.poly1d(np.polyfit(part["age"], part["volume_mm3"], degree))
        residual = part["volume_mm3"].to_numpy() - trend(part["age"].to_numpy())
        sd = float(np.sqrt((residual**2).sum() / (len(part) - degree - 1)))
        if not sd > 0:
            raise ValueError(f"--gate-volumes {reference}: {name} has no spread around its age trend (SD 0)")
        trends[name] = (trend, sd)

    def check(volumes, ages):
        reasons = []
        for volume, age in zip(volumes, ages):
            maps, labels = vol.segment(Volume(np.asarray(volume, np.float32), np.asarray(affine)))
            table = combine_regions(region_tissue_table(maps, labels, vol.region_names_), groups)
            table = structure_table(table.assign(image_id="x", age=age), structures)
            off = []
            for row in table.itertuples():
                trend, sd = trends[row.structure]
                z = (row.volume_mm3 - float(trend(age))) / sd
                if abs(z) > tolerance:
                    off.append(
                        f"{row.structure} {z:+.1f} SD off the reference trend at age {age:.1f} "
                        f"(|z| > {tolerance:g})"
                    )
            reasons.append("; ".join(off) or None)
        return reasons

    return check
