"""Metrics against values computed by hand (fake = 1 is the positive class)."""

import numpy as np
import pytest

from deepfake.engine.metrics import auc_or_none, classification_metrics, equal_error_rate


def test_report_matches_hand_computed_values():
    # 3 real (0) and 3 fake (1); threshold 0.5 -> predictions [0, 0, 1, 1, 1, 0]
    targets = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([0.1, 0.4, 0.6, 0.7, 0.9, 0.3])
    m = classification_metrics(targets, probs, threshold=0.5)
    # Pairs (fake, real) ranked correctly: 0.7>{.1,.4,.6}=3, 0.9>all=3, 0.3>{.1}=1 -> 7 of 9.
    assert m["auc"] == pytest.approx(7 / 9)
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]  # rows true [real, fake], cols predicted
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["real_accuracy"] == pytest.approx(2 / 3)
    assert m["fake_accuracy"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # AP: ranking by p(fake) = .9F .7F .6R .4R .3F .1R -> precision at each fake: 1, 1, 3/5.
    assert m["ap"] == pytest.approx((1 + 1 + 3 / 5) / 3)
    assert (m["n_samples"], m["n_real"], m["n_fake"]) == (6, 3, 3)


def test_threshold_moves_the_decisions():
    targets = np.array([0, 1])
    probs = np.array([0.3, 0.4])
    assert classification_metrics(targets, probs, threshold=0.5)["accuracy"] == 0.5
    assert classification_metrics(targets, probs, threshold=0.35)["accuracy"] == 1.0


def test_equal_error_rate_of_perfect_and_inverted_scores():
    targets = np.array([0, 0, 1, 1])
    assert equal_error_rate(targets, np.array([0.1, 0.2, 0.8, 0.9])) == pytest.approx(0.0)
    assert equal_error_rate(targets, np.array([0.9, 0.8, 0.2, 0.1])) == pytest.approx(1.0)


def test_equal_error_rate_where_fpr_meets_fnr():
    # With one real above one fake, the best balanced point misclassifies 1 of 2 on each side.
    targets = np.array([0, 1, 0, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    assert equal_error_rate(targets, probs) == pytest.approx(0.5)


def test_single_class_leaves_ranking_metrics_undefined():
    targets = np.array([1, 1, 1])
    probs = np.array([0.2, 0.7, 0.9])
    m = classification_metrics(targets, probs)
    assert m["auc"] is None and m["ap"] is None and m["eer"] is None
    assert m["real_accuracy"] is None
    assert m["fake_accuracy"] == pytest.approx(2 / 3)
    assert auc_or_none(targets, probs) is None


def test_log_loss_by_hand_and_exact_where_p_saturates():
    from deepfake.evaluation.calibration import log_loss

    targets = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([0.1, 0.4, 0.6, 0.7, 0.9, 0.3])
    logits = np.log(probs / (1 - probs))
    assert log_loss(logits, targets) == pytest.approx(-np.mean(np.log([0.9, 0.6, 0.4, 0.7, 0.9, 0.3])))
    assert log_loss(2 * logits, targets, temperature=2.0) == pytest.approx(log_loss(logits, targets))
    # A fake at logit -40 costs log(1 + e^40) ~ 40 nats, not the 16.1 of p clipped at 1e-7.
    saturated = np.array([-40.0, 5.0, -3.0, 2.0])
    expected = np.mean([np.log1p(np.exp(40.0)), np.log1p(np.exp(-5.0)), np.log1p(np.exp(-3.0)), np.log1p(np.exp(2.0))])
    assert log_loss(saturated, np.array([1, 1, 0, 0])) == pytest.approx(expected) == pytest.approx(10.546, abs=1e-3)
