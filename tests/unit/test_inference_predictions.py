"""predictions.csv as the contract says: input order, a verdict at the threshold, damaged rows unscored."""

import csv
import math

import numpy as np

from deepfake.engine.evaluate import fake_probability
from deepfake.inference.predictions import (
    COLUMNS,
    OVERLAYS_MARK,
    Row,
    prediction_table,
    remove_overlays,
    write_predictions,
)


def test_a_score_at_the_threshold_is_fake_and_damaged_rows_keep_their_place_and_reason():
    rows = [
        Row("a.jpg", 0, target=0.0), Row("b.jpg", 1, target=1.0), Row("empty.png", None, "empty file (0 bytes)"),
        Row("c.jpg", 2, target=1.0), Row("broken.jpg", 3, target=0.0),
    ]  # fmt: skip
    probs = np.array([0.3, 0.42, 0.5, 0.9])
    frame = prediction_table(rows, probs, 0.42, {3: "unreadable: OSError: truncated"}, labelled=True)

    assert list(frame.columns) == [*COLUMNS, "true_label"]
    assert frame["path"].tolist() == ["a.jpg", "b.jpg", "empty.png", "c.jpg", "broken.jpg"]
    assert frame["label"].tolist()[:2] == ["real", "fake"]  # 0.42 at the threshold 0.42 is fake
    assert frame.loc[3, "label"] == "fake" and frame.loc[3, "p_fake"] == 0.5
    for i, reason in ((2, "empty file (0 bytes)"), (4, "unreadable: OSError: truncated")):
        assert math.isnan(frame.loc[i, "p_fake"]) and frame.loc[i, "label"] is None
        assert frame.loc[i, "damaged"] == reason
    assert frame["true_label"].tolist() == ["real", "fake", "real", "fake", "real"]


def test_scores_read_back_as_the_floats_scored_so_a_reported_threshold_splits_the_file_as_it_did(tmp_path):
    """p_fake was written with 8 digits: at a threshold that is a test image's own score (tpr_at_fpr's), the
    file called that image real and gave other rates than metrics_test.json."""
    logits = np.random.default_rng(0).normal(scale=4, size=200).astype(np.float32)
    probs = fake_probability(logits, 0.7)
    rows = [Row(f"{i}.png", i, target=float(i % 2)) for i in range(len(probs))]
    write_predictions(prediction_table(rows, probs, 0.5, {}, labelled=True), tmp_path / "predictions.csv")
    with (tmp_path / "predictions.csv").open(newline="") as handle:
        written = np.array([float(row["p_fake"]) for row in csv.DictReader(handle)])
    assert (written == probs).all()


def test_a_run_without_overlays_removes_only_the_earlier_predicts_own(tmp_path):
    """A rerun without predict.cam left cam/*.png beside a predictions.csv that no longer lists them."""
    ours, theirs = tmp_path / "cam", tmp_path / "user"
    for folder in (ours, theirs):
        folder.mkdir()
        (folder / "00000_a.png").write_bytes(b"png")
    (ours / OVERLAYS_MARK).write_text("overlays of task=predict")
    (tmp_path / "emptied").mkdir()
    (tmp_path / "emptied" / OVERLAYS_MARK).write_text("overlays of task=predict")
    (tmp_path / "emptied" / "00000_b.png").write_bytes(b"png")

    (ours / "notes.txt").write_text("mine")
    for folder in (ours, theirs, tmp_path / "emptied", tmp_path / "missing"):
        remove_overlays(folder)

    assert sorted(p.name for p in ours.iterdir()) == ["notes.txt"]  # the user's file, and the folder, stay
    assert sorted(p.name for p in theirs.iterdir()) == ["00000_a.png"]  # unmarked: the user's, untouched
    assert not (tmp_path / "emptied").exists()
