"""Kaggle-style split CSVs ("140k Real and Fake Faces") and the dataset that reads them.

The CSVs are read exactly as downloaded: an unnamed index column, then
``original_path,id,label,label_str,path`` with ``path`` relative to the image root. Any extra
column is carried along untouched, except one named ``target`` or ``row``: the reader's own columns
of those names replace it. Internally ``target`` is 1 for fake, the positive class.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from deepfake.data.image_files import ImageFileDataset
from deepfake.data.path_table import PathTable
from deepfake.errors import DataError

log = logging.getLogger(__name__)

_FIRST_DATA_LINE = 2  # line 1 of the file is the header
LABEL_WORDS_COLUMN = "label_str"  # Kaggle's "real" / "fake" beside each 0/1 label
# How pandas names the leading column that Kaggle's CSVs leave without a header (the index).
KAGGLE_INDEX_COLUMN = "Unnamed: 0"


def read_raw_csv(csv_path: str | os.PathLike, *, as_text: bool = False) -> pd.DataFrame:
    """Read a split CSV as it is; Kaggle's unnamed index column appears as ``KAGGLE_INDEX_COLUMN``.

    ``as_text``: every cell the string it is in the file (no ``00123`` -> 123.0, no ``NA`` -> NaN),
    for writing rows back out unchanged. Raises DataError for a CSV that is missing, unreadable or
    has no rows.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: CSV file not found; check the dataset's csv paths")
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False) if as_text else pd.read_csv(csv_path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv_path}: CSV file is empty; regenerate or re-download it") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{csv_path}: cannot read CSV ({reason}); fix or re-download it") from None
    if len(frame) == 0:
        raise DataError(f"{csv_path}: CSV has a header but no rows; give a CSV that lists images")
    return frame


def require_column(frame: pd.DataFrame, column: str, csv_path: Path, setting: str) -> None:
    if column not in frame.columns:
        present = ", ".join(map(str, frame.columns))
        raise DataError(f"{csv_path}: no column {column!r} (columns: {present}); fix the CSV or set {setting}")


def labels_to_targets(
    frame: pd.DataFrame,
    label_column: str,
    csv_path: Path,
    real_label: int,
    setting: str = "the dataset's label_column",
    polarity: str | None = "dataset.real_label",
) -> np.ndarray:
    """The CSV's 0/1 labels as targets, 1 = fake; DataError naming the first row that is not 0 or 1.
    With ``polarity`` (the setting that holds ``real_label``) and a ``label_str`` column, the labels are
    checked against its words (:func:`check_label_words`)."""
    if real_label not in (0, 1):
        raise DataError(f"real_label={real_label!r} must be 0 or 1 (the CSV label that means 'real')")
    labels = pd.to_numeric(frame[label_column], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        value = frame[label_column].iloc[first]
        problem = "is empty" if pd.isna(value) else f"'{value}' is not 0 or 1"
        # Words (real/fake, as predictions.csv writes them) are not labels here: say what is read.
        words = "" if pd.isna(value) or str(value).strip().lstrip("-").isdigit() else (
            f" (labels are numbers: {real_label} = real, {1 - real_label} = fake)")  # fmt: skip
        raise DataError(
            f"{csv_path}:{first + _FIRST_DATA_LINE}: {label_column} {problem}{words}; fix the row or set {setting}"
        )
    targets = (labels.astype(int) != real_label).astype(int).to_numpy()
    if polarity is not None and LABEL_WORDS_COLUMN in frame.columns:
        check_label_words(frame, targets, label_column, csv_path, real_label, polarity)
    return targets


def check_label_words(
    frame: pd.DataFrame, targets: np.ndarray, label_column: str, csv_path: Path, real_label: int, polarity: str
) -> None:
    """Kaggle's ``label_str`` (real/fake) is the one thing in a CSV that can tell a wrong polarity: read
    the other way, every label contradicts it, and a model trained on it learns to call reals fake.
    Most rows contradicting it: refused, naming the setting; a few: a warning naming the first."""
    words = frame[LABEL_WORDS_COLUMN].astype(str).str.strip().str.lower().to_numpy()
    known = np.isin(words, ("real", "fake"))
    disagree = known & (words != np.where(targets == 1, "fake", "real"))
    if not disagree.any():
        return
    first = int(np.flatnonzero(disagree)[0])
    example = (f"line {first + _FIRST_DATA_LINE}: {label_column}={frame[label_column].iloc[first]}, "
               f"{LABEL_WORDS_COLUMN}={words[first]}")  # fmt: skip
    if disagree.sum() * 2 > known.sum():
        raise DataError(
            f"{csv_path}: {LABEL_WORDS_COLUMN} contradicts {label_column} read with {polarity}={real_label} in "
            f"{int(disagree.sum())} of {int(known.sum())} rows ({example}); set {polarity}={1 - real_label}"
        )
    log.warning("%s: %s contradicts %s in %d of %d rows (%s); %s is what is trained and scored", csv_path,
                LABEL_WORDS_COLUMN, label_column, int(disagree.sum()), int(known.sum()), example, label_column)  # fmt: skip


def image_path_column(frame: pd.DataFrame, path_column: str, csv_path: Path) -> pd.Series:
    """The path column as stripped strings; DataError naming the first empty row."""
    paths = frame[path_column].fillna("").astype(str).str.strip()
    empty = paths == ""
    if empty.any():
        line = int(np.flatnonzero(empty.to_numpy())[0]) + _FIRST_DATA_LINE
        raise DataError(f"{csv_path}:{line}: empty {path_column}; every row needs an image path")
    return paths


def _resolve_under_root(relative: pd.Series, root: Path, csv_path: Path, column: str) -> list[str]:
    """Join each entry with ``root``; refuse entries that climb out of it.

    The check is lexical (no symlink resolution) so a root that is itself a symlink to another
    disk keeps working, while ``../`` or absolute paths elsewhere in a CSV are refused.
    """
    resolved = []
    for position, entry in enumerate(relative):
        if entry == "":
            resolved.append("")
            continue
        full = os.path.normpath(os.path.join(root, entry))
        if os.path.commonpath([full, root]) != str(root):
            line = position + _FIRST_DATA_LINE
            raise DataError(
                f"{csv_path}:{line}: {column} {entry!r} points outside the image root {root}; "
                "paths must be relative to the root"
            )
        resolved.append(full)
    return resolved


def read_split_csv(
    csv_path: str | os.PathLike,
    root_dir: str | os.PathLike,
    *,
    real_label: int = 1,
    path_column: str = "path",
    label_column: str = "label",
    warn_duplicates: bool = True,
) -> pd.DataFrame:
    """Read one split CSV and resolve its image paths.

    Returns the CSV's columns plus ``path`` (absolute), ``target`` (1 = fake), ``row`` (the CSV
    line, for messages) and, when the CSV has a ``mask_path`` column, ``mask_path`` (absolute or "").
    """
    csv_path = Path(csv_path)
    root = Path(os.path.abspath(root_dir))
    if not root.is_dir():
        raise DataError(f"{root}: image root directory not found (needed by {csv_path}); check the dataset root")
    frame = read_raw_csv(csv_path)
    require_column(frame, path_column, csv_path, "the dataset's path_column")
    require_column(frame, label_column, csv_path, "the dataset's label_column")

    targets = labels_to_targets(frame, label_column, csv_path, real_label)
    paths = image_path_column(frame, path_column, csv_path)

    frame = frame.drop(columns=[KAGGLE_INDEX_COLUMN], errors="ignore")
    frame["path"] = _resolve_under_root(paths, root, csv_path, path_column)
    frame["target"] = targets
    frame["row"] = np.arange(len(frame)) + _FIRST_DATA_LINE
    if warn_duplicates:
        _warn_duplicates(frame, csv_path, path_column)
    if "mask_path" in frame.columns:
        masks = frame["mask_path"].fillna("").astype(str).str.strip()
        frame["mask_path"] = _resolve_under_root(masks, root, csv_path, "mask_path")
    return frame


def _warn_duplicates(frame: pd.DataFrame, csv_path: Path, column: str) -> None:
    """Repeated images are legal but usually a merge mistake: they weigh double in training and metrics."""
    repeats = frame["path"].duplicated(keep="first")
    if not repeats.any():
        return
    first = frame.loc[repeats, "path"].iloc[0]
    lines = frame.loc[frame["path"] == first, "row"].tolist()
    log.warning(
        "%s: %d row(s) repeat an earlier row's %s (first: line %d repeats line %d, %s); they count twice",
        csv_path, int(repeats.sum()), column, lines[1], lines[0], first,
    )  # fmt: skip


class CsvImageDataset(ImageFileDataset):
    """Images listed in a split CSV; a damaged image is served black and flagged ``damaged``.

    Keeps only numpy arrays per row (paths, targets, CSV lines, mask paths), not the DataFrame:
    forked workers would copy its Python objects page by page. :meth:`read_frame` reads it again.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        root_dir: str | os.PathLike,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        *,
        real_label: int = 1,
        path_column: str = "path",
        label_column: str = "label",
        fallback_size: int = 256,
    ) -> None:
        self.csv_path = Path(csv_path)
        self.root_dir = Path(os.path.abspath(root_dir))
        self._columns = {"real_label": real_label, "path_column": path_column, "label_column": label_column}
        frame = read_split_csv(self.csv_path, self.root_dir, **self._columns)
        super().__init__(
            PathTable(frame["path"]), transform, frame["target"].to_numpy(dtype=np.int64), fallback_size=fallback_size
        )
        self.rows = frame["row"].to_numpy(dtype=np.int64)  # the CSV line of each item, for messages
        self.mask_paths = PathTable(frame["mask_path"]) if "mask_path" in frame.columns else None

    def read_frame(self) -> pd.DataFrame:
        """The CSV as :func:`read_split_csv` returns it (every column, resolved paths, targets, lines),
        read again: the dataset keeps its columns as arrays, not the frame. Its repeated rows were
        warned about when the dataset was made."""
        return read_split_csv(self.csv_path, self.root_dir, **self._columns, warn_duplicates=False)
