"""Split a large dataset into N stratified batches, to train on one slice at a time.

Each batch keeps the real/fake ratio of the whole and is written in the input's own CSV format
(Kaggle's unnamed index column included), so ``dataset=batch dataset.batch=K`` reads it with
the same code as the full split.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pandas as pd
from sklearn.model_selection import StratifiedKFold

from deepfake.data.csv_dataset import KAGGLE_INDEX_COLUMN, labels_to_targets, read_raw_csv, require_column
from deepfake.errors import DataError
from deepfake.tracking.checkpoint import atomic_path, make_folder

log = logging.getLogger(__name__)


def split_into_batches(
    frame: pd.DataFrame, n_batches: int, *, label_column: str = "label", seed: int = 0
) -> list[pd.DataFrame]:
    """``n_batches`` disjoint frames that together hold every row, each with the label mix of the whole.

    Deterministic for a given ``seed``; rows keep their original order within a batch.
    """
    if n_batches < 1:
        raise DataError(f"n_batches={n_batches} must be at least 1")
    if label_column not in frame.columns:
        present = ", ".join(map(str, frame.columns))
        raise DataError(f"no column {label_column!r} to stratify on (columns: {present}); pass the label column")
    if n_batches == 1:
        return [frame.copy()]
    missing = frame[label_column].isna().to_numpy()
    if missing.any():
        line = int(missing.argmax()) + 2  # line 1 is the header
        raise DataError(f"line {line}: empty {label_column}; every row needs a label")
    counts = frame[label_column].value_counts()
    if counts.min() < n_batches:
        raise DataError(
            f"cannot make {n_batches} stratified batches: {label_column}={counts.idxmin()} has only "
            f"{counts.min()} rows; use at most {counts.min()} batches"
        )
    folds = StratifiedKFold(n_splits=n_batches, shuffle=True, random_state=seed)
    positions = (sorted(held_out) for _, held_out in folds.split(frame, frame[label_column]))
    return [frame.iloc[rows] for rows in positions]


def _write_csv_atomically(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as temporary:
        # Renamed back to an empty header, Kaggle's index column is written exactly as it was read.
        frame.rename(columns={KAGGLE_INDEX_COLUMN: ""}).to_csv(temporary, index=False)


def write_batches(
    train_csv: str | os.PathLike,
    val_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    n_batches: int,
    *,
    seed: int = 0,
    label_column: str = "label",
) -> list[Path]:
    """Write ``out_dir/batch{K}/{train,valid}.csv`` for K = 1..n_batches; returns the batch dirs.

    Both splits are stratified by ``label_column``; batch K of the validation CSV pairs with
    batch K of the training CSV.
    """
    splits = {}
    for name, csv_path in (("train", train_csv), ("valid", val_csv)):
        frame = read_raw_csv(csv_path, as_text=True)  # rows written back exactly as they were read
        # Every label 0 or 1, as training will read them: a bad row would otherwise land in a batch.
        require_column(frame, label_column, Path(csv_path), "--label-column")
        # Only checked: cutting batches keeps each row's label whatever its polarity.
        labels_to_targets(frame, label_column, Path(csv_path), real_label=1, setting="--label-column", polarity=None)
        try:
            splits[name] = split_into_batches(frame, n_batches, label_column=label_column, seed=seed)
        except DataError as error:
            raise DataError(f"{csv_path}: {error}") from None
    directories = []
    for number in range(1, n_batches + 1):
        directory = make_folder(Path(out_dir) / f"batch{number}", f"--out-dir {out_dir}")
        for name, parts in splits.items():
            _write_csv_atomically(parts[number - 1], directory / f"{name}.csv")
        directories.append(directory)
    # An earlier, larger split's batch<K> for K > n_batches overlaps the new ones: dataset.batch=K would train
    # on rows of the new batches again, silently.
    for stale in sorted(Path(out_dir).glob("batch*")):
        if stale.name.removeprefix("batch").isdigit() and int(stale.name.removeprefix("batch")) > n_batches:
            shutil.rmtree(stale)
            log.info("removed %s, a batch of an earlier split into more batches", stale)
    return directories
