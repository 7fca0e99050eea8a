"""Scores -> metrics, with fake as the positive class (the field's convention).

Inputs are plain arrays: ``targets`` (1 = fake, 0 = real) and ``probs`` = p(fake) (or, for the ranking
figures, any score that orders images as p(fake) does: the logits). Every figure comes
from scikit-learn; this module only decides which figures a deepfake report needs and makes them
JSON-friendly (undefined values become ``None`` rather than NaN, which JSON cannot hold).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def equal_error_rate(targets: np.ndarray, probs: np.ndarray) -> float | None:
    """The operating point where the false-positive rate equals the false-negative rate."""
    if len(np.unique(targets)) < 2:
        return None
    fpr, tpr, _ = skm.roc_curve(targets, probs)
    fnr = 1.0 - tpr
    # The ROC is sampled at thresholds; take the crossing point by linear interpolation between
    # the two samples that bracket FPR == FNR.
    diff = fpr - fnr
    i = int(np.argmax(diff >= 0))
    if i == 0:
        return float(fpr[0])
    x0, x1 = diff[i - 1], diff[i]
    w = x0 / (x0 - x1) if x1 != x0 else 0.0
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def auc_or_none(targets: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present (it is undefined there)."""
    if len(np.unique(targets)) < 2:
        return None
    return float(skm.roc_auc_score(targets, probs))


def classification_metrics(
    targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5, *, scores: np.ndarray | None = None
) -> dict:
    """The full report of ``task=test``: ranking, threshold and calibration figures plus counts.

    ``scores``: what the ranking figures (AUC, AP, EER) rank by, when not ``probs``: the logits, which
    order the images as p(fake) does without its saturation (in float64 every logit above ~37 is
    p = 1.0, and a tie); the decisions and calibration stay on ``probs``.
    """
    targets = np.asarray(targets, dtype=int)
    probs = np.asarray(probs, dtype=float)
    ranked = probs if scores is None else np.asarray(scores, dtype=float)
    preds = (probs >= threshold).astype(int)
    both_classes = len(np.unique(targets)) == 2
    tn, fp, fn, tp = skm.confusion_matrix(targets, preds, labels=[0, 1]).ravel()
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        targets, preds, average="binary", pos_label=1, zero_division=0
    )
    n_real, n_fake = int((targets == 0).sum()), int((targets == 1).sum())
    return {
        "auc": auc_or_none(targets, ranked),
        "ap": _finite_or_none(skm.average_precision_score(targets, ranked)) if both_classes else None,
        "eer": equal_error_rate(targets, ranked),
        "accuracy": float(skm.accuracy_score(targets, preds)),
        "real_accuracy": float(tn / n_real) if n_real else None,
        "fake_accuracy": float(tp / n_fake) if n_fake else None,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "threshold": float(threshold),
        # Rows are the true class, columns the predicted one, both ordered [real, fake].
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "n_samples": int(len(targets)),
        "n_real": n_real,
        "n_fake": n_fake,
    }
