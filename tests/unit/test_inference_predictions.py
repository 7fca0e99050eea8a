"""predictions.csv as the contract says: input order, a verdict at the threshold, damaged rows unscored."""

import math

import numpy as np

from deepfake.inference.predictions import COLUMNS, Row, prediction_table


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
