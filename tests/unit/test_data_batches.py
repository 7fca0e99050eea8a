"""Stratified, disjoint, covering, deterministic batches, written in Kaggle's CSV format."""

import runpy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from deepfake.data.batches import split_into_batches, write_batches
from deepfake.data.csv_dataset import read_split_csv
from deepfake.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def _kaggle_frame(n_real: int, n_fake: int) -> pd.DataFrame:
    labels = [1] * n_real + [0] * n_fake
    ids = [f"id{i:03d}" for i in range(len(labels))]
    folders = ["real" if label else "fake" for label in labels]
    return pd.DataFrame(
        {
            "original_path": [f"/kaggle/input/x/{i}.png" for i in ids],
            "id": ids,
            "label": labels,
            "label_str": folders,
            "path": [f"train/{folder}/{i}.jpg" for folder, i in zip(folders, ids)],
        }
    )


def _write_kaggle_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path)  # the index becomes Kaggle's unnamed first column
    return path


def test_batches_are_stratified_disjoint_covering(tmp_path):
    frame = _kaggle_frame(60, 40)

    batches = split_into_batches(frame, 5)

    assert [len(batch) for batch in batches] == [20] * 5
    assert [batch["label"].sum() for batch in batches] == [12] * 5
    ids = [set(batch["id"]) for batch in batches]
    assert set().union(*ids) == set(frame["id"])
    assert sum(len(part) for part in ids) == len(frame)
    for batch in batches:
        assert list(batch.index) == sorted(batch.index)  # original order kept


def test_batches_are_deterministic_per_seed():
    frame = _kaggle_frame(30, 30)

    first, again, other = (split_into_batches(frame, 3, seed=seed) for seed in (0, 0, 1))

    assert all(a.equals(b) for a, b in zip(first, again))
    assert not all(a.equals(b) for a, b in zip(first, other))


def test_one_batch_is_the_whole_frame():
    frame = _kaggle_frame(3, 2)

    (batch,) = split_into_batches(frame, 1)

    assert batch.equals(frame)


@pytest.mark.parametrize(
    "n_batches, label_column, expected",
    [(0, "label", "n_batches=0"), (4, "label", "label=0 has only 3 rows"), (2, "kind", "no column 'kind'")],
)
def test_impossible_splits_are_data_errors(n_batches, label_column, expected):
    with pytest.raises(DataError, match=expected):
        split_into_batches(_kaggle_frame(5, 3), n_batches, label_column=label_column)


def test_write_batches_keeps_kaggle_format(tmp_path):
    train_csv = _write_kaggle_csv(_kaggle_frame(21, 9), tmp_path / "train.csv")
    val_csv = _write_kaggle_csv(_kaggle_frame(6, 6), tmp_path / "valid.csv")
    (tmp_path / "images").mkdir()

    directories = write_batches(train_csv, val_csv, tmp_path / "batches", 3)

    assert directories == [tmp_path / "batches" / f"batch{k}" for k in (1, 2, 3)]
    header = train_csv.read_text().splitlines()[0]
    for directory in directories:
        for name, source in (("train", train_csv), ("valid", val_csv)):
            written = directory / f"{name}.csv"
            assert written.read_text().splitlines()[0] == header
            original = pd.read_csv(source, index_col=0)
            batch = pd.read_csv(written, index_col=0)
            assert batch.equals(original.loc[batch.index])  # index column and rows preserved
            frame = read_split_csv(written, tmp_path / "images")
            assert frame["target"].mean() == pytest.approx(original["label"].eq(0).mean())


def test_write_batches_copies_every_row_verbatim(tmp_path):
    """Cells that look like numbers or missing values stay as written: 00123 is an id, not 123.0."""
    train_csv = tmp_path / "train.csv"
    train_csv.write_text(
        ",original_path,id,label,label_str,path\n"
        "0,/ffhq/00123.png,00123,1,real,train/real/00123.jpg\n"
        "1,/gan/NA.jpg,NA,0,fake,train/fake/NA.jpg\n"
        "2,/ffhq/04567.png,04567,1,real,train/real/04567.jpg\n"
        "3,/gan/1E5.jpg,1E5,0,fake,train/fake/1E5.jpg\n"
    )

    (directory,) = write_batches(train_csv, train_csv, tmp_path / "out", 1)

    assert (directory / "train.csv").read_text() == train_csv.read_text()
    (first, second) = write_batches(train_csv, train_csv, tmp_path / "two", 2)
    source = train_csv.read_text().splitlines()
    written = [line for d in (first, second) for line in (d / "train.csv").read_text().splitlines()[1:]]
    assert sorted(written) == sorted(source[1:])


def test_write_batches_without_index_column_writes_none(tmp_path):
    train_csv = tmp_path / "train.csv"
    _kaggle_frame(4, 4).to_csv(train_csv, index=False)

    (directory,) = write_batches(train_csv, train_csv, tmp_path / "out", 1)

    assert (directory / "train.csv").read_text() == train_csv.read_text()


def test_write_batches_names_the_csv_at_fault(tmp_path):
    train_csv = _write_kaggle_csv(_kaggle_frame(4, 4), tmp_path / "train.csv")
    val_csv = _write_kaggle_csv(_kaggle_frame(4, 1), tmp_path / "valid.csv")

    with pytest.raises(DataError, match=r"valid\.csv: cannot make 2 stratified batches"):
        write_batches(train_csv, val_csv, tmp_path / "out", 2)
    with pytest.raises(DataError, match=r"absent\.csv: CSV file not found"):
        write_batches(tmp_path / "absent.csv", val_csv, tmp_path / "out", 2)


@pytest.mark.parametrize("n_batches", [1, 2])
def test_a_label_training_would_refuse_is_refused_before_any_batch_is_written(tmp_path, n_batches):
    """One batch used to copy the row with label 2 into batch1/train.csv; two blamed 'too few rows'."""
    frame = _kaggle_frame(4, 4)
    frame.loc[5, "label"] = 2
    train_csv = _write_kaggle_csv(frame, tmp_path / "train.csv")
    val_csv = _write_kaggle_csv(_kaggle_frame(4, 4), tmp_path / "valid.csv")
    with pytest.raises(DataError, match=r"train\.csv:7: label .*2.*; fix the row or set --label-column"):
        write_batches(train_csv, val_csv, tmp_path / "out", n_batches)
    assert not (tmp_path / "out").exists()


def test_make_batches_script(tmp_path):
    train_csv = _write_kaggle_csv(_kaggle_frame(10, 10), tmp_path / "train.csv")
    val_csv = _write_kaggle_csv(_kaggle_frame(4, 4), tmp_path / "valid.csv")
    out = tmp_path / "batches"
    command = [
        sys.executable,
        str(REPO / "scripts" / "make_batches.py"),
        "--train-csv",
        str(train_csv),
        "--val-csv",
        str(val_csv),
        "--out-dir",
        str(out),
        "--n-batches",
        "2",
    ]

    done = subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.csv")) == [
        "batch1/train.csv",
        "batch1/valid.csv",
        "batch2/train.csv",
        "batch2/valid.csv",
    ]


def test_make_batches_script_reports_one_line_and_exits_2(tmp_path, capsys):
    # In process: the subprocess test above already covers running it as a script.
    main = runpy.run_path(str(REPO / "scripts" / "make_batches.py"))["main"]

    code = main(["--train-csv", str(tmp_path / "nope.csv"), "--n-batches", "2", "--out-dir", str(tmp_path)])

    stderr = capsys.readouterr().err
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("ERROR ") and "nope.csv: CSV file not found" in stderr

    assert main(["--n-batches", "2", "nokey=1"]) == 2
    assert capsys.readouterr().err.startswith("ERROR Could not override 'nokey'")


def test_make_batches_defaults_come_from_the_paths_config_not_the_working_directory(tmp_path, monkeypatch):
    # The Kaggle layout under paths.root_dir/data/140k, as dataset=kaggle_140k reads it.
    source = tmp_path / "data" / "140k"
    source.mkdir(parents=True)
    _write_kaggle_csv(_kaggle_frame(10, 10), source / "train.csv")
    _write_kaggle_csv(_kaggle_frame(4, 4), source / "valid.csv")
    monkeypatch.chdir(tmp_path / "data")  # nothing is found relative to here
    main = runpy.run_path(str(REPO / "scripts" / "make_batches.py"))["main"]

    assert main(["--n-batches", "2", f"paths.root_dir={tmp_path}"]) == 0

    out = tmp_path / "data" / "batches"  # dataset=batch's batches_dir
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.csv")) == [
        "batch1/train.csv",
        "batch1/valid.csv",
        "batch2/train.csv",
        "batch2/valid.csv",
    ]


def test_splitting_again_into_fewer_batches_removes_the_earlier_split_s_extra_batches(tmp_path):
    """batch3 of a split into 3 overlaps the new batch1 of a split into 2: dataset.batch=3 trained on it."""
    train_csv = _write_kaggle_csv(_kaggle_frame(30, 30), tmp_path / "train.csv")
    write_batches(train_csv, train_csv, tmp_path / "batches", 3)
    write_batches(train_csv, train_csv, tmp_path / "batches", 2)
    assert sorted(p.name for p in (tmp_path / "batches").iterdir()) == ["batch1", "batch2"]
