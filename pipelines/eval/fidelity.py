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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.arguments import bounded_int, finite_float
from pipelines.eval.common import MeasureOptions, eval_output, measure_pair, write_config
from pipelines.eval.flags import config_from_args, measure_options, measuring_parser

if TYPE_CHECKING:
    import pandas as pd

    from analysis.config import EvalConfig
    from analysis.evaluation import CohortMeasures

__all__ = ["EXAMPLE", "add_parser", "phantom_curves_of", "run_fidelity"]

logger = logging.getLogger(__name__)

EXAMPLE = (
    "  flowlet-eval fidelity --real phantoms --synthetic synth --bap runs/bap/best.pt --out eval/fidelity\n"
)

#: Age bin edges (years) when none are given: 10-year bins from 10 to 90.
DEFAULT_BINS = tuple(float(e) for e in range(10, 100, 10))


def run_fidelity(
    real: str | Path,
    synthetic: str | Path,
    out: Path,
    config: EvalConfig,
    measure: MeasureOptions | None = None,
    *,
    bap: str | Path | None = None,
    bap_column: str = "pred",
    bins: Sequence[float] | None = None,
    n_boot: int = 2000,
    truth: bool = True,
    name: str = "synthetic",
) -> Path:
    """Measure both cohorts, build every fidelity table and write them into ``out``.

    Args:
        real: real cohort (folder or table).
        synthetic: synthetic cohort (its age = the requested age).
        out: output folder.
        config: the evaluation config.
        measure: registration, image limit, progress bars, worker processes.
        bap: brain-age checkpoint trained on real data; None skips the brain-age gap.
        bap_column: prediction used for the gap, ``pred`` (raw) or ``pred_corrected``.
        bins: age bin edges in years (None: :data:`DEFAULT_BINS`).
        n_boot: bootstrap resamples.
        truth: compare with the phantom model's lifespan curves when ``real`` is a phantom cohort.
        name: label of the synthetic set in the summary.

    Example:
        >>> run_fidelity("phantoms", "synth", Path("eval/fidelity"), load_config(), bap="best.pt")  # doctest: +SKIP
    """
    from analysis import fidelity, fidelity_report

    measure = measure or MeasureOptions()
    start = time.perf_counter()
    edges = [float(e) for e in (bins or DEFAULT_BINS)]
    curves = phantom_curves_of(real) if truth else None
    pair = measure_pair(real, synthetic, config, measure, keep_images=True)
    sets = {"real": pair.real, "synthetic": pair.synthetic}
    volumes = {label: fidelity.structure_table(m.measures.volumes) for label, m in sets.items()}
    images = {label: _image_table(m.table, m.measures) for label, m in sets.items()}
    predictions = None
    if bap:
        predictions = _predict(bap, {label: m.table for label, m in sets.items()}, bap_column)
        for label in images:
            images[label]["pred"] = predictions[label]["pred"].to_numpy()
    report = fidelity_report.evaluate_fidelity(
        volumes["real"],
        volumes["synthetic"],
        edges=edges,
        images_real=images["real"],
        images_synthetic=images["synthetic"],
        predictions=predictions["synthetic"] if predictions else None,
        features=(pair.real.measures.features, pair.synthetic.measures.features),
        truth_curves=curves,
        n_boot=n_boot,
        seed=config.seed,
    )
    named = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
    if predictions:
        named["age_gap_real"] = fidelity.age_gap_by_bin(
            predictions["real"], edges, n_boot=n_boot, seed=config.seed
        )
    head = {
        "name": name,
        "n_real": len(pair.real.table),
        "n_synthetic": len(pair.synthetic.table),
        "bin_edges": edges,
    }
    _write_outputs(out, volumes, images, named, report, head, start)
    write_config(out, config, registration=measure.registration, real=str(real), synthetic=str(synthetic))
    for row in report.bars.itertuples():
        logger.info("%-48s %10.3f (target %s, worst bin %s): met = %s", row.bar, row.value, row.target,
                    row.worst_bin, row.met)  # fmt: skip
    return out


def _write_outputs(
    out: Path,
    volumes: dict[str, pd.DataFrame],
    images: dict[str, pd.DataFrame],
    named: dict[str, pd.DataFrame | None],
    report: Any,
    head: dict[str, Any],
    start: float,
) -> None:
    """The volume and image tables, one TSV per report table, ``fidelity.json`` and ``summary.md``."""
    import pandas as pd

    from analysis import fidelity_report, tables
    from flowlet.data.io import write_json_atomic, write_table_atomic, write_text_atomic

    for label, table in volumes.items():
        write_table_atomic(out / f"volumes_{label}.tsv", table)
    write_table_atomic(
        out / "images.tsv", pd.concat([t.assign(set=k) for k, t in images.items()], ignore_index=True)
    )
    for name, table in named.items():
        if table is not None:
            write_table_atomic(out / f"{name}.tsv", table)
    records = {k: json.loads(t.to_json(orient="records")) for k, t in named.items() if t is not None}
    write_json_atomic(
        out / "fidelity.json", {**head, "seconds": round(time.perf_counter() - start, 2), **records}
    )
    text = fidelity_report.summary_markdown(report, title=f"Age fidelity: real vs {head['name']}")
    if "age_gap_real" in named:
        text += "\n## Brain-age gap of the real images (reference)\n\n" + tables.to_markdown(
            named["age_gap_real"].round(3)
        )
    write_text_atomic(out / "summary.md", text)


def phantom_curves_of(source: str | Path) -> Any:
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


def _predict(checkpoint: str | Path, tables: dict[str, pd.DataFrame], column: str) -> dict[str, pd.DataFrame]:
    """Predicted age of every image of each cohort table (``image_id`` order kept)."""
    from bap.checkpoint import load_model
    from bap.predict import predict_cohort

    bap_model = load_model(checkpoint)
    out = {}
    for label, table in tables.items():
        pred = predict_cohort(bap_model, table)
        out[label] = table[["image_id", "age"]].assign(pred=pred[column].to_numpy())
    return out


def _image_table(table: pd.DataFrame, measures: CohortMeasures) -> pd.DataFrame:
    """Per image: ``image_id``, ``age`` and the texture noise of its normalised intensities."""
    from analysis.metrics.texture import median_residual_noise

    values = [median_residual_noise(measures.images[i].astype("float32")) for i in table["image_id"]]
    return table[["image_id", "age"]].assign(noise=values).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ command line
def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fidelity`` to the ``flowlet-eval`` parser."""
    p = measuring_parser(
        subparsers,
        "fidelity",
        help="per-age-bin fidelity: volumes, slopes, brain-age gap, texture noise",
        doc=__doc__,
        example=EXAMPLE,
    )
    p.add_argument("--real", required=True, help="real cohort (folder or table)")
    p.add_argument("--synthetic", required=True, help="synthetic cohort (its age = the requested age)")
    p.add_argument("--bap", help="brain-age checkpoint trained on real data (best.pt of bap-train)")
    p.add_argument(
        "--bap-column",
        default="pred",
        choices=("pred", "pred_corrected"),
        help="prediction used for the gap (default: pred, the raw model output)",
    )
    p.add_argument(
        "--bins",
        type=finite_float(0, 120),
        nargs="+",
        help="age bin edges in years (default: 10-year bins from 10 to 90)",
    )
    p.add_argument(
        "--n-boot", type=bounded_int(100, 1_000_000), default=2000, help="bootstrap resamples (default 2000)"
    )
    p.add_argument(
        "--no-truth",
        action="store_true",
        help="skip the comparison with the phantom model's lifespan curves (done when --real is a phantom cohort)",
    )
    p.add_argument("--name", default="synthetic", help="label of the synthetic set in the summary")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    inputs = (args.config, args.atlas_image, args.atlas_table, args.real, args.synthetic, args.bap)
    with eval_output(args.out, inputs, overwrite=args.overwrite):
        run_fidelity(
            args.real,
            args.synthetic,
            args.out,
            config,
            measure_options(args),
            bap=args.bap,
            bap_column=args.bap_column,
            bins=args.bins,
            n_boot=args.n_boot,
            truth=not args.no_truth,
            name=args.name,
        )
