"""Everything ``task=test`` says about one set of scores at one decision rule.

``summarise`` adds to engine.metrics' report (ranking, decisions, counts) what a detection
researcher needs to trust it: accuracy at 0.5 beside accuracy at the chosen threshold, TPR at fixed
false-positive rates, calibration before and after the stored temperature, and bootstrap intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepfake.engine.metrics import classification_metrics
from deepfake.evaluation.bootstrap import bootstrap_intervals
from deepfake.evaluation.calibration import calibration_figures, log_loss
from deepfake.evaluation.decision import DecisionRule
from deepfake.evaluation.operating_point import as_p_fake, rates_at, tpr_at_fpr

# Columns of the robustness and generalisation tables.
TABLE_METRICS = ("auc", "ap", "accuracy", "real_accuracy", "fake_accuracy")


@dataclass(frozen=True)
class SummarySettings:
    bootstrap: int = 1000  # resamples; 0 = no intervals
    confidence: float = 0.95
    seed: int = 0
    tpr_at_fpr: tuple[float, ...] = (0.001, 0.01, 0.05)
    ece_bins: int = 15


def summarise(targets: np.ndarray, logits: np.ndarray, rule: DecisionRule, settings: SummarySettings) -> dict:
    targets = np.asarray(targets, dtype=int)
    probs = rule.p_fake(logits)
    both_classes = len(np.unique(targets)) == 2
    # Ranking figures rank by the logits: p(fake) ties every logit above ~37 at 1.0.
    report = classification_metrics(targets, probs, rule.threshold, scores=logits)
    report["log_loss"] = log_loss(logits, targets, rule.temperature)
    report["accuracy_at_0.5"] = rates_at(targets, probs, 0.5)["accuracy"]
    report["tpr_at_fpr"] = (
        [_tpr_at_fpr(targets, logits, rate, rule) for rate in settings.tpr_at_fpr] if both_classes else []
    )
    report["calibration"] = calibration_figures(targets, logits, rule.temperature, settings.ece_bins)
    report["intervals"] = bootstrap_intervals(
        targets,
        probs,
        rule.threshold,
        n_resamples=settings.bootstrap,
        seed=settings.seed,
        confidence=settings.confidence,
        scores=logits,
    )
    report["bootstrap"] = {"resamples": settings.bootstrap, "confidence": settings.confidence, "seed": settings.seed,
                           "stratified": True, "interval": "percentile"}  # fmt: skip
    return report


def _tpr_at_fpr(targets: np.ndarray, logits: np.ndarray, max_fpr: float, rule: DecisionRule) -> dict:
    """tpr_at_fpr read off the ROC of the scaled logits, its threshold given back as the p(fake) it stands
    for. Scaled first, as the operating point is: a "call nothing fake" threshold one float above the top
    logit, divided by the temperature afterwards, could round back onto the top image's own score."""
    scaled = np.asarray(logits, dtype=float) / rule.temperature
    point = tpr_at_fpr(targets, scaled, max_fpr)
    return {**point, "threshold": as_p_fake(point["threshold"], scaled)}


def table_row(targets: np.ndarray, logits: np.ndarray, rule: DecisionRule) -> dict:
    """The figures of one row of the robustness or generalisation table."""
    report = classification_metrics(targets, rule.p_fake(logits), rule.threshold, scores=logits)
    return {key: report[key] for key in (*TABLE_METRICS, "n_samples")}
