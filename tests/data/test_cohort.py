"""Cohort loading from every supported source, and one test per validation error."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowlet.data import keys
from flowlet.data.cohort import (
    Cohort,
    CohortError,
    load_cohort,
    mni_affine_for_shape,
    normalize_sex,
    normalize_subject_id,
    read_image,
    save_cohort_table,
)
from flowlet.data.nifti import NiftiError

MNI_2MM = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])


def _table(file: Path, /, **columns) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(columns).to_csv(file, sep="\t" if file.suffix == ".tsv" else ",", index=False)
    return file


def _error(source, *words: str, **kwargs) -> str:
    with pytest.raises(CohortError) as info:
        load_cohort(source, **kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


# ------------------------------------------------------------------------------------------------ BIDS


def test_bids_folder_with_sessions(bids_folder: Path) -> None:
    cohort = load_cohort(bids_folder)
    table = cohort.table
    assert list(table.columns[:6]) == list(keys.COHORT_COLUMNS)
    assert "diagnosis" in table.columns
    assert table[keys.SUBJECT_ID].tolist() == ["01", "01", "02", "03"]
    assert table[keys.SESSION_ID].tolist() == ["01", "02", keys.UNKNOWN, keys.UNKNOWN]
    assert table[keys.AGE].tolist() == [60.5, 62.25, 65.3, 23.0]  # session ages, then participant ages
    assert table[keys.SEX].tolist() == ["M", "M", "F", keys.UNKNOWN]
    assert table[keys.SITE].tolist() == ["A", "A", "B", "A"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table[keys.PATH])
    assert table[keys.PATH].iloc[3].endswith("sub-03_T1w.nii")
    assert cohort.source == bids_folder
    assert len(cohort) == 4
    assert cohort.subjects() == ["01", "02", "03"]
    assert cohort.records()[2][keys.AGE] == 65.3
    summary = cohort.summary()
    assert summary["n_scans"] == 4
    assert summary["n_subjects"] == 3
    assert summary["age_max"] == 65.3
    assert summary["site_counts"] == {"A": 3, "B": 1}


def test_sessions_file_without_age_uses_participant_age(bids_folder: Path) -> None:
    _table(
        bids_folder / "sub-01" / "sub-01_sessions.tsv", session_id=["ses-01", "ses-02"], scanner=["x", "y"]
    )
    assert load_cohort(bids_folder).ages.tolist() == [60.0, 60.0, 65.3, 23.0]


def test_participants_filter_drops_subjects(bids_folder: Path) -> None:
    cohort = load_cohort(bids_folder, filter_column="diagnosis", filter_value="CN")
    assert cohort.subjects() == ["01", "03"]


def test_bids_derivatives_reads_raw_participants(bids_folder: Path, make_nifti) -> None:
    deriv = bids_folder / "derivatives" / "prep"
    make_nifti(deriv / "sub-02" / "anat" / "sub-02_space-MNI_desc-preproc_T1w.nii.gz")
    cohort = load_cohort(deriv)
    assert cohort.subjects() == ["02"]
    assert cohort.ages.tolist() == [65.3]
    assert "derivatives" in cohort.table[keys.PATH].iloc[0]


def test_image_without_participant_row_is_an_error(bids_folder: Path, make_nifti) -> None:
    make_nifti(bids_folder / "sub-09" / "anat" / "sub-09_T1w.nii.gz")
    _error(bids_folder, "participants.tsv", "no participants row", "sub-09_T1w.nii.gz")


def test_participant_without_image_is_a_warning(bids_folder: Path, caplog) -> None:
    participants = pd.read_csv(bids_folder / "participants.tsv", sep="\t", dtype=str)
    participants.loc[3] = ["sub-07", "40", "M", "A", "CN"]
    participants.to_csv(bids_folder / "participants.tsv", sep="\t", index=False)
    with caplog.at_level(logging.WARNING):
        cohort = load_cohort(bids_folder)
    assert "07" not in cohort.subjects()
    assert "have no image" in caplog.text
    assert "07" in caplog.text


def test_bids_duplicate_images_per_session(bids_folder: Path, make_nifti) -> None:
    make_nifti(bids_folder / "sub-02" / "anat" / "sub-02_run-2_T1w.nii.gz")
    _error(bids_folder, "duplicate (subject_id, session_id)", "'02'")


def test_bids_without_participants_file(tmp_path: Path, make_nifti) -> None:
    make_nifti(tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    _error(tmp_path, str(tmp_path), "no participants.tsv")


def test_bids_without_images(tmp_path: Path) -> None:
    _table(tmp_path / "participants.tsv", participant_id=["sub-01"], age=[3])
    _error(tmp_path, "no images found")


def test_participants_missing_age_column(bids_folder: Path) -> None:
    (bids_folder / "sub-01" / "sub-01_sessions.tsv").unlink()
    _table(bids_folder / "participants.tsv", participant_id=["sub-01", "sub-02", "sub-03"], years=[1, 2, 3])
    message = _error(bids_folder, "participants.tsv", "missing age column", "'01'", "found columns")
    assert "years" in message
    assert load_cohort(bids_folder, age_column="years").ages.tolist() == [1.0, 1.0, 2.0, 3.0]


def test_bad_session_age_names_sessions_file(bids_folder: Path) -> None:
    _table(bids_folder / "sub-01" / "sub-01_sessions.tsv", session_id=["ses-01", "ses-02"], age=[61, -4])
    _error(bids_folder, "sub-01_sessions.tsv", "column 'age'", "subject '01' session '02'", "-4")


# ------------------------------------------------------------------------------------------------ tables


def test_plain_table_relative_paths_and_extras(tmp_path: Path, make_nifti) -> None:
    make_nifti(tmp_path / "images" / "a.nii.gz")
    make_nifti(tmp_path / "images" / "b1.nii.gz")
    make_nifti(tmp_path / "images" / "b2.nii.gz")
    table = _table(
        tmp_path / "meta" / "cohort.csv",
        subject_id=["sub-a", "b", "b"],
        session_id=["", "ses-1", "2"],
        path=["../images/a.nii.gz", "../images/b1.nii.gz", str(tmp_path / "images" / "b2.nii.gz")],
        Age=["65.3", "40", "41.5"],
        sex=["Female", "m", "M"],
        scanner=["x", "y", "y"],
    )
    cohort = load_cohort(table)
    assert cohort.table[keys.SUBJECT_ID].tolist() == ["a", "b", "b"]
    assert cohort.table[keys.SESSION_ID].tolist() == [keys.UNKNOWN, "1", "2"]
    assert cohort.table[keys.PATH].tolist() == [
        str(tmp_path / "images" / f"{n}.nii.gz") for n in ("a", "b1", "b2")
    ]
    assert cohort.ages.tolist() == [65.3, 40.0, 41.5]
    assert cohort.table[keys.SEX].tolist() == ["F", "M", "M"]
    assert cohort.table[keys.SITE].tolist() == [keys.UNKNOWN] * 3
    assert list(cohort.table.columns) == [*keys.COHORT_COLUMNS, "scanner"]


def test_plain_table_root_overrides_folder(tmp_path: Path, make_nifti) -> None:
    make_nifti(tmp_path / "data" / "a.nii")
    table = _table(tmp_path / "t.tsv", subject_id=["a"], path=["a.nii"], AGE=[30])
    assert load_cohort(table, root=tmp_path / "data").table[keys.PATH].iloc[0] == str(
        tmp_path / "data" / "a.nii"
    )


def test_official_catalog_with_condition_filter(tmp_path: Path, make_nifti) -> None:
    paths = [str(make_nifti(tmp_path / f"s{i}_AGE_{a}.nii.gz")) for i, a in enumerate((5.9, 65.3, 70))]
    catalog = _table(
        tmp_path / "catalog.csv",
        SubjectID=["OPENBHB_1_AGE_5.90", "OPENBHB_2_AGE_65.30", "OPENBHB_3_AGE_70"],
        FilePath=paths,
        Age=[5.9, 65.3, 70],
        Condition=["CN", "CN", "AD"],
    )
    cohort = load_cohort(catalog)
    assert cohort.ages.tolist() == [5.9, 65.3, 70.0]
    assert list(cohort.table.columns) == [*keys.COHORT_COLUMNS, "Condition"]
    filtered = load_cohort(catalog, filter_column="Condition", filter_value="CN")
    assert filtered.subjects() == ["OPENBHB_1_AGE_5.90", "OPENBHB_2_AGE_65.30"]
    numeric = load_cohort(catalog, filter_column="Age", filter_value="65.30")
    assert numeric.ages.tolist() == [65.3]
    _error(catalog, "filter column 'Group' not found", "Condition", filter_column="Group", filter_value=1)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("old", ["'old' is not a number"]),
        ("", ["'' is not a number"]),
        ("-1", ["-1 is outside [0, 120]"]),
        ("130", ["130 is outside [0, 120]"]),
    ],
)
def test_bad_ages(tmp_path: Path, make_nifti, value: str, words: list[str]) -> None:
    make_nifti(tmp_path / "a.nii")
    make_nifti(tmp_path / "b.nii")
    table = _table(tmp_path / "t.csv", subject_id=["a", "b"], path=["a.nii", "b.nii"], age=["30", value])
    _error(table, str(table), "column 'age'", "line 3 (subject 'b')", *words)


def test_missing_columns_listed(tmp_path: Path) -> None:
    table = _table(tmp_path / "t.csv", subject_id=["a"], path=["a.nii"], years=[3])
    _error(table, str(table), "missing age column", "['age', 'Age', 'AGE']", "'years'")
    table = _table(tmp_path / "u.csv", subject_id=["a"], file=["a.nii"], age=[3])
    _error(table, "missing image path column", "'file'")


def test_duplicate_scans(tmp_path: Path, make_nifti) -> None:
    make_nifti(tmp_path / "a.nii")
    table = _table(tmp_path / "t.csv", subject_id=["a", "sub-a"], path=["a.nii", "a.nii"], age=[3, 4])
    _error(table, str(table), "duplicate (subject_id, session_id)", "('a', 'n/a')")


def test_missing_files_listed(tmp_path: Path) -> None:
    names = [f"m{i}.nii" for i in range(7)]
    table = _table(tmp_path / "t.csv", subject_id=list("abcdefg"), path=names, age=[30] * 7)
    message = _error(table, str(table), "7 image files not found", "column 'path'", "m4.nii")
    assert "m5.nii" not in message  # at most five listed
    assert len(load_cohort(table, check_files=False)) == 7


def test_empty_cohort(tmp_path: Path) -> None:
    table = _table(tmp_path / "t.csv", subject_id=["a"], path=["a.nii"], age=[30], group=["x"])
    _error(table, str(table), "empty", filter_column="group", filter_value="y")


def test_filtered_table_reports_file_lines(tmp_path: Path) -> None:
    table = _table(
        tmp_path / "t.csv", subject_id=["a", "b", "c"], path=["a", "b", "c"], age=[1, 2, "x"], g=[0, 1, 1]
    )
    _error(table, "line 4 (subject 'c')", filter_column="g", filter_value=1, check_files=False)


def test_missing_source(tmp_path: Path) -> None:
    _error(tmp_path / "nothing.tsv", "no such file or folder")


def test_save_cohort_table_round_trip(bids_folder: Path, tmp_path: Path) -> None:
    cohort = load_cohort(bids_folder)
    out = save_cohort_table(cohort, tmp_path / "out" / "cohort.tsv")
    again = load_cohort(out)
    pd.testing.assert_frame_equal(again.table, cohort.table)
    assert out.read_text().splitlines()[0].split("\t")[:6] == list(keys.COHORT_COLUMNS)


def test_subset_by_mask_and_ids(bids_folder: Path) -> None:
    cohort = load_cohort(bids_folder)
    assert cohort.subset(["sub-01"]).table[keys.SESSION_ID].tolist() == ["01", "02"]
    assert cohort.subset(cohort.ages > 61).subjects() == ["01", "02"]
    assert isinstance(cohort.subset("03"), Cohort)
    with pytest.raises(CohortError, match="unknown subject ids"):
        cohort.subset(["99"])
    with pytest.raises(CohortError, match="mask has shape"):
        cohort.subset(np.array([True]))


def test_normalisers() -> None:
    assert normalize_subject_id("sub-0042") == normalize_subject_id(" 0042 ") == "0042"
    assert [normalize_sex(v) for v in ("M", "female", "FEMALE", "w", None, float("nan"))] == [
        "M", "F", "F", keys.UNKNOWN, keys.UNKNOWN, keys.UNKNOWN,
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------ OpenBHB


def test_openbhb_arrays(tmp_path: Path) -> None:
    arrays = tmp_path / "train_quasiraw"
    arrays.mkdir()
    rng = np.random.default_rng(0)
    for sid in ("1000606", "1000721"):
        np.save(
            arrays / f"sub-{sid}_preproc-quasiraw_T1w.npy", rng.random((1, 1, 91, 109, 91), dtype=np.float32)
        )
    _table(
        tmp_path / "participants.tsv",
        participant_id=["1000606", "1000721", "1000999"],
        age=[5.9, 65.3, 30],
        sex=["female", "male", "male"],
        site=[3, 17, 3],
        study=["ABIDE", "IXI", "IXI"],
    )
    cohort = load_cohort(tmp_path)
    assert cohort.subjects() == ["1000606", "1000721"]
    assert cohort.ages.tolist() == [5.9, 65.3]
    assert cohort.table[keys.SITE].tolist() == ["3", "17"]
    assert cohort.table[keys.SEX].tolist() == ["F", "M"]
    assert cohort.table["study"].tolist() == ["ABIDE", "IXI"]
    volume = read_image(cohort.table[keys.PATH].iloc[0])
    assert volume.shape == (91, 109, 91)
    assert volume.data.dtype == np.float32
    np.testing.assert_array_equal(volume.affine, MNI_2MM)
    also = load_cohort(tmp_path / "participants.tsv", root=arrays)
    assert also.table[keys.PATH].tolist() == cohort.table[keys.PATH].tolist()


def test_mni_affines() -> None:
    np.testing.assert_array_equal(mni_affine_for_shape((91, 109, 91)), MNI_2MM)
    assert np.diag(mni_affine_for_shape((182, 218, 182))).tolist() == [-1, 1, 1, 1]
    assert np.diag(mni_affine_for_shape((121, 145, 121))).tolist() == [-1.5, 1.5, 1.5, 1]
    with pytest.raises(ValueError, match="not a known MNI152 grid"):
        mni_affine_for_shape((10, 10, 10))


def test_read_image_errors(tmp_path: Path, make_nifti) -> None:
    np.save(tmp_path / "odd.npy", np.arange(120, dtype=np.float32).reshape(4, 5, 6))
    with pytest.raises(NiftiError, match=r"odd\.npy.*pass affine="):
        read_image(tmp_path / "odd.npy")
    assert read_image(tmp_path / "odd.npy", affine=np.eye(4)).shape == (4, 5, 6)
    np.save(tmp_path / "flat.npy", np.zeros((4, 5, 6), dtype=np.float32))
    with pytest.raises(NiftiError, match=r"flat\.npy: the image is constant"):
        read_image(tmp_path / "flat.npy", affine=np.eye(4))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(NiftiError, match=r"obj\.npy: cannot read"):
        read_image(tmp_path / "obj.npy")
    np.save(tmp_path / "two.npy", np.zeros((2, 4, 5, 6)))
    with pytest.raises(NiftiError, match=r"two\.npy: expected a 3D array"):
        read_image(tmp_path / "two.npy")
    bad = np.zeros((4, 5, 6))
    bad[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(NiftiError, match=r"nan\.npy: array has NaN"):
        read_image(tmp_path / "nan.npy", affine=np.eye(4))
    with pytest.raises(NiftiError, match=r"gone\.npy: file not found"):
        read_image(tmp_path / "gone.npy")
    assert read_image(make_nifti(tmp_path / "x.nii.gz")).shape == (4, 5, 6)
