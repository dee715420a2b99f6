"""``flowlet-eval fidelity``: per-age-bin fidelity of a synthetic cohort against real brains of the same ages.

Both cohorts are measured by the same volumetrics pipeline; the tables come from :mod:`analysis.fidelity` and
:mod:`analysis.fidelity_report`. Written into ``--out``:

* ``volumes_real.tsv``, ``volumes_synthetic.tsv``: the structures (lateral ventricles, hippocampus, total GM, WM,
  CSF) of every image; ``images.tsv``: per image its set, age, texture noise and (with ``--bap``) predicted age;
* ``volumes_by_bin.tsv``, ``slopes.tsv``, ``truth.tsv`` (phantom cohorts), ``age_gap.tsv`` and ``age_gap_real.tsv``
  (with ``--bap``), ``noise.tsv``, ``realism.tsv``, ``bars.tsv``;
* ``fidelity.json`` (every table), ``summary.md`` and the resolved ``config.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from pipelines.arguments import bounded_int, finite_float

logger = logging.getLogger("flowlet.eval")

__all__ = ["add_parser", "phantom_curves_of", "run_fidelity"]


def add_parser(sub, common: argparse.ArgumentParser, epilog: str) -> None:
    """Add the ``fidelity`` subcommand to the ``flowlet-eval`` parser."""
    f = sub.add_parser(
        "fidelity",
        parents=[common],
        help="per-age-bin fidelity: volumes, slopes, brain-age gap, texture noise",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("--real", required=True, help="real cohort (folder or table)")
    f.add_argument("--synthetic", required=True, help="synthetic cohort (its age = the requested age)")
    f.add_argument("--bap", help="brain-age checkpoint trained on real data (best.pt of bap-train)")
    f.add_argument(
        "--bap-column",
        default="pred",
        choices=("pred", "pred_corrected"),
        help="prediction used for the gap (default: pred, the raw model output)",
    )
    f.add_argument(
        "--bins",
        type=finite_float(0, 120),
        nargs="+",
        help="age bin edges in years (default: 10-year bins from 10 to 90)",
    )
    f.add_argument(
        "--n-boot", type=bounded_int(100, 1_000_000), default=2000, help="bootstrap resamples (default 2000)"
    )
    f.add_argument(
        "--no-truth",
        action="store_true",
        help="skip the comparison with the phantom model's lifespan curves (done when --real is a phantom cohort)",
    )
    f.add_argument("--name", default="synthetic", help="label of the synthetic set in the summary")


def phantom_curves_of(source: str):
    """The lifespan curves of a phantom cohort folder (``code/phantom_config.json``), or None for other cohorts."""
    from analysis.fidelity import phantom_truth_curves
    from flowlet.data.phantom import LifespanCurve, PhantomConfig

    path = Path(source) / "code" / "phantom_config.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))["config"]
        curves = {
            name: LifespanCurve(tuple(spec["ages"]), tuple(spec["rates"]))
            for name, spec in raw["curves"].items()
        }
        config = dataclasses.replace(
            PhantomConfig.from_yaml(),
            curves=curves,
            realisation_gain={k: float(v) for k, v in raw["realisation_gain"].items()},
            reference_age=float(raw["reference_age"]),
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path}: cannot read the phantom lifespan curves (config.curves, realisation_gain, reference_age): {exc}"
        ) from exc
    return phantom_truth_curves(config)


def _predict(checkpoint: str, tables: dict, column: str) -> dict:
    """Predicted age of every image of each cohort table (``image_id`` order kept)."""
    from bap.checkpoint import load_model
    from bap.predict import predict_cohort

    bap_model = load_model(checkpoint)
    out = {}
    for label, table in tables.items():
        pred = predict_cohort(bap_model, table)
        out[label] = table[["image_id", "age"]].assign(pred=pred[column].to_numpy())
    return out


def _image_table(table, measures, noise_fn):
    values = [noise_fn(measures.images[i].astype("float32")) for i in table["image_id"]]
    return table[["image_id", "age"]].assign(noise=values).reset_index(drop=True)


def run_fidelity(args: argparse.Namespace, config) -> Path:
    """Measure both cohorts, build every fidelity table and write them into ``args.out``."""
    from analysis import fidelity, fidelity_report, tables
    from analysis.metrics.texture import median_residual_noise
    from flowlet.data.io import write_json_atomic, write_table_atomic, write_text_atomic
    from pipelines.evaluate import _measure_pair, _volumetrics, _write_config

    start = time.perf_counter()
    out, progress = Path(args.out), not args.no_progress
    edges = [float(e) for e in (args.bins or range(10, 100, 10))]
    curves = None if args.no_truth else phantom_curves_of(args.real)
    vol = _volumetrics(config, args.registration, progress)
    (real_table, m_real), (syn_table, m_syn) = _measure_pair(
        args.real,
        args.synthetic,
        vol,
        config,
        limit=args.limit,
        progress=progress,
        jobs=args.jobs,
        keep_images=True,
    )
    real = fidelity.structure_table(m_real.volumes)
    synthetic = fidelity.structure_table(m_syn.volumes)
    images = {
        "real": _image_table(real_table, m_real, median_residual_noise),
        "synthetic": _image_table(syn_table, m_syn, median_residual_noise),
    }
    predictions = None
    if args.bap:
        predictions = _predict(args.bap, {"real": real_table, "synthetic": syn_table}, args.bap_column)
        for label in images:
            images[label]["pred"] = predictions[label]["pred"].to_numpy()
    report = fidelity_report.evaluate_fidelity(
        real,
        synthetic,
        edges=edges,
        images_real=images["real"],
        images_synthetic=images["synthetic"],
        predictions=predictions["synthetic"] if predictions else None,
        features=(m_real.features, m_syn.features),
        truth_curves=curves,
        n_boot=args.n_boot,
        seed=config.seed,
    )
    write_table_atomic(out / "volumes_real.tsv", real)
    write_table_atomic(out / "volumes_synthetic.tsv", synthetic)
    import pandas as pd

    write_table_atomic(
        out / "images.tsv", pd.concat([t.assign(set=k) for k, t in images.items()], ignore_index=True)
    )
    named = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
    if predictions:
        named["age_gap_real"] = fidelity.age_gap_by_bin(
            predictions["real"], edges, n_boot=args.n_boot, seed=config.seed
        )
    for name, table in named.items():
        if table is not None:
            write_table_atomic(out / f"{name}.tsv", table)
    write_json_atomic(
        out / "fidelity.json",
        {
            "name": args.name,
            "n_real": len(real_table),
            "n_synthetic": len(syn_table),
            "bin_edges": edges,
            "seconds": round(time.perf_counter() - start, 2),
            **{k: json.loads(t.to_json(orient="records")) for k, t in named.items() if t is not None},
        },
    )
    text = fidelity_report.summary_markdown(report, title=f"Age fidelity: real vs {args.name}")
    if "age_gap_real" in named:
        text += "\n## Brain-age gap of the real images (reference)\n\n" + tables.to_markdown(
            named["age_gap_real"].round(3)
        )
    write_text_atomic(out / "summary.md", text)
    _write_config(
        out, config, registration=args.registration, real=str(args.real), synthetic=str(args.synthetic)
    )
    for row in report.bars.itertuples():
        logger.info("%-48s %10.3f (target %s, worst bin %s): met = %s", row.bar, row.value, row.target,
                    row.worst_bin, row.met)  # fmt: skip
    return out
