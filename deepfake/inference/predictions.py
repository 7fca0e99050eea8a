"""predictions.csv: one row per image (per face with face cropping), in input order.

Columns: ``path, p_fake, label, damaged`` (the contract), then ``face, box`` with face cropping and
``true_label`` when the input has labels. A damaged file keeps its row with the reason and no score:
the score of the black stand-in it was replaced by says nothing about the file.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepfake.engine.evaluate import fake_probability, verdict
from deepfake.tracking.checkpoint import atomic_write_text

COLUMNS = ["path", "p_fake", "label", "damaged"]
FACE_COLUMNS = ["face", "box"]


@dataclass
class Row:
    """One line of predictions.csv before scoring; ``item`` indexes the scored dataset (None when
    nothing is scored: a file damaged before scoring, or a photo without a face)."""

    path: str
    item: int | None
    damaged: str | None = None
    face: int | None = None
    box: str | None = None
    target: float = math.nan  # 1 = fake, NaN when unknown


def item_rows(dataset) -> list[Row]:
    """One row per item of an ImageFileDataset, in its order (no face cropping)."""
    pairs = enumerate(zip(dataset.paths, dataset.targets))
    return [Row(path, item=index, target=float(target)) for index, (path, target) in pairs]


def damaged_reasons(dataset, indices) -> dict[int, str]:
    """Why each of the items the scoring loop flagged is damaged (decoded again: workers cannot tell)."""
    return {int(index): dataset.damage_reason(int(index)) or "unreadable" for index in indices}


def p_fake_per_item(count: int, preds, temperature: float) -> np.ndarray:
    """p(fake) of each of ``count`` items, NaN where nothing was scored; in float64, task=test's and
    task=predict's alike: a score equal to the stored threshold falls on the same side in both."""
    probs = np.full(count, np.nan)
    if preds is not None:
        probs[preds.indices] = fake_probability(preds.logits, temperature)
    return probs


def prediction_table(
    rows: list[Row],
    probs: np.ndarray,
    threshold: float,
    damaged: dict[int, str],
    *,
    faces: bool = False,
    labelled: bool = False,
) -> pd.DataFrame:
    """The table of ``rows``; ``probs[item]`` is p(fake) of scored item ``item`` and ``damaged``
    maps the items found damaged while scoring to their reasons."""
    records = []
    for row in rows:
        reason = row.damaged or (damaged.get(row.item) if row.item is not None else None)
        p_fake = float(probs[row.item]) if row.item is not None and reason is None else math.nan
        record = {
            "path": row.path,
            "p_fake": p_fake,
            "label": None if math.isnan(p_fake) else verdict(p_fake, threshold),
            "damaged": reason,
        }
        if faces:
            record |= {"face": row.face, "box": row.box}
        if labelled:
            record["true_label"] = "fake" if row.target == 1 else "real"
        records.append(record)
    columns = COLUMNS + (FACE_COLUMNS if faces else []) + (["true_label"] if labelled else [])
    frame = pd.DataFrame.from_records(records, columns=columns)
    if faces:
        frame["face"] = frame["face"].astype("Int64")  # an integer column with gaps, not 0.0, 1.0
    return frame


def write_predictions(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """p_fake as the shortest text that reads back as the very float64 scored (pandas' default): the
    thresholds metrics_test.json reports are test images' own scores, and 8 digits put such an image
    on the other side of its own threshold."""
    atomic_write_text(path, frame.to_csv(index=False))


OVERLAYS_MARK = ".predict_overlays"  # what makes a folder's NNNNN_*.png files predict's own to replace


def overlays_in(out_dir: Path) -> list[Path]:
    """The files of ``out_dir`` named as predict names its overlays."""
    return sorted(out_dir.glob(f"{'[0-9]' * 5}_*.png")) if out_dir.is_dir() else []


def foreign_overlays(out_dir: Path) -> list[Path]:
    """Files named as overlays in a folder that no predict marked as its own: the user's, never replaced."""
    return [] if (out_dir / OVERLAYS_MARK).is_file() else overlays_in(out_dir)


def remove_overlays(out_dir: Path) -> None:
    """An earlier predict's overlays in ``out_dir``, its mark and, left empty, the folder: the predictions
    they explained are being replaced by ones without overlays, which they would seem to explain. Only a
    folder predict marked as its own is touched, and in it only the files named as overlays."""
    if not (out_dir / OVERLAYS_MARK).is_file():
        return
    for path in overlays_in(out_dir):
        path.unlink()
    (out_dir / OVERLAYS_MARK).unlink()
    with contextlib.suppress(OSError):  # not empty: a file of the user's put there stays, and the folder with it
        out_dir.rmdir()
