"""What a user asks to score: one image, a folder walked recursively, or a CSV of paths (and labels).

Only paths are gathered here; images are decoded later, batch by batch, by the dataset that scores
them. Order is stable (a folder is walked in sorted order, a CSV keeps its rows), so predictions.csv
lists images in input order and two runs over the same input agree row for row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepfake.data.csv_dataset import image_path_column, labels_to_targets, read_raw_csv, require_column
from deepfake.data.images import IMAGE_SUFFIXES
from deepfake.data.scan import not_utf8
from deepfake.errors import DataError
from deepfake.inference.predictions import OVERLAYS_MARK

CSV_EXTENSIONS = frozenset({".csv"})


@dataclass
class ImageInputs:
    """The images to score, in input order; ``targets`` (1 = fake) only when the input has labels."""

    paths: list[str]
    source: str  # "image", "folder" or "csv"
    targets: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)  # folder entries that are not image files
    root_dir: Path | None = None  # a CSV's: the folder its relative paths were read under

    @property
    def labelled(self) -> bool:
        return self.targets is not None

    def target(self, index: int) -> float:
        """Image ``index``'s target (1 = fake), NaN when the input has no labels."""
        return float(self.targets[index]) if self.targets is not None else float("nan")


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def discover_inputs(
    spec: str | os.PathLike,
    *,
    root_dir: str | os.PathLike | None = None,
    path_column: str = "path",
    label_column: str | None = "label",
    real_label: int = 1,
    key: str = "predict.input",
) -> ImageInputs:
    """Resolve ``spec`` (an image file, a folder or a CSV) into the images to score.

    A CSV's relative paths are taken from ``root_dir`` (default: the CSV's folder); its
    ``label_column``, when present (and not None), makes the input labelled. Raises DataError, naming ``spec``,
    when it does not exist or holds no image; ``key`` is the config key messages name.
    """
    path = Path(os.path.expanduser(os.fspath(spec)))
    if not path.exists():
        raise DataError(f"{key}={spec}: no such file or folder; pass an image, a folder of images or a CSV")
    if path.is_dir():
        inputs = _walk_folder(path)
    elif path.suffix.lower() in CSV_EXTENSIONS:
        inputs = _read_csv(path, root_dir, path_column, label_column, real_label, key.split(".")[0])
    elif is_image_file(path):
        inputs = ImageInputs([str(path)], "image")
    else:
        raise DataError(f"{key}={spec}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))}), a folder or a .csv file")
    if shown := next(filter(None, map(not_utf8, inputs.paths)), None):  # before a predictions.csv could fail
        raise DataError(f"{key}={spec}: the file name {shown} is not UTF-8, as predictions.csv must be; rename it")
    if not inputs.paths:
        skipped = f" ({len(inputs.skipped)} other file(s) skipped)" if inputs.skipped else ""
        raise DataError(f"{key}={spec}: holds no image file{skipped}; extensions looked for: "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))}")  # fmt: skip
    return inputs


def _walk_folder(folder: Path) -> ImageInputs:
    """Every image file under ``folder``: a folder's own files in sorted order, then its subfolders in
    sorted order, depth first. Symlinked folders are followed once (a link back up the tree would
    otherwise loop forever); paths are kept as found, not resolved. A subfolder holding an earlier
    predict's overlays (marked by it) is no input: predicting a folder into itself with overlays, then
    elsewhere, scored its panels as photos."""
    images, skipped = [], []
    visited: set[tuple[int, int]] = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        stat = os.stat(current)
        if (stat.st_dev, stat.st_ino) in visited or (current != str(folder) and OVERLAYS_MARK in files):
            dirs[:] = []
            continue
        visited.add((stat.st_dev, stat.st_ino))
        dirs.sort()
        for name in sorted(files):
            (images if is_image_file(name) else skipped).append(os.path.join(current, name))
    return ImageInputs(images, "folder", skipped=skipped)


def _read_csv(
    csv_path: Path,
    root_dir: str | os.PathLike | None,
    path_column: str,
    label_column: str | None,
    real_label: int,
    group: str = "predict",
) -> ImageInputs:
    frame = read_raw_csv(csv_path)
    require_column(frame, path_column, csv_path, f"{group}.path_column")
    root = Path(os.path.expanduser(os.fspath(root_dir))) if root_dir is not None else csv_path.parent
    if not root.is_dir():
        raise DataError(f"{group}.root_dir={root_dir}: no such folder (the CSV's relative paths start there)")
    # os.path.join keeps an absolute entry as it is: a user's own CSV may list files anywhere.
    paths = [os.path.join(root, entry) for entry in image_path_column(frame, path_column, csv_path)]
    targets = None
    if label_column in frame.columns:
        targets = labels_to_targets(
            frame, label_column, csv_path, real_label, "predict.label_column", "predict.real_label"
        )
    return ImageInputs(paths, "csv", targets=targets, root_dir=root)
