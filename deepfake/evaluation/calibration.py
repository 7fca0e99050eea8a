"""Calibration of p(fake): temperature scaling, expected calibration error, Brier score.

A temperature T turns a logit into p(fake) = sigmoid(logit / T). It never changes the ranking
(AUC, AP, EER stay the same), only how far the probabilities can be trusted as probabilities.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_expit
from sklearn.metrics import brier_score_loss

from deepfake.engine.evaluate import fake_probability

# Fitted temperatures are kept within these bounds: beyond them the scores are all but constant or
# all but hard 0/1, which says the validation set is degenerate (one class, perfectly separated).
TEMPERATURE_BOUNDS = (0.05, 20.0)


def log_loss(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """The mean cross-entropy of p(fake) = sigmoid(logit / temperature), exact at any logit: p(fake)
    itself saturates at 0 or 1 (log 0), which clipping p would cap at a fixed cost per image."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    targets = np.asarray(targets)
    # log(sigmoid(z)) for fakes, log(sigmoid(-z)) for reals, without overflow at large |z|.
    return float(-np.mean(np.where(targets == 1, log_expit(z), log_expit(-z))))


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The single temperature that minimises the log loss of ``logits`` on ``targets`` (Guo et al. 2017)."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=int)
    low, high = np.log(TEMPERATURE_BOUNDS)
    # In log T the loss is smooth and the bounds are symmetric around T = 1.
    result = minimize_scalar(
        lambda log_t: log_loss(logits, targets, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


def reliability_bins(targets: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict:
    """Equal-width bins of p(fake) over [0, 1]: per bin the count, the mean p(fake) and the share of fakes."""
    targets = np.asarray(targets, dtype=float)
    probs = np.asarray(probs, dtype=float)
    # A score of exactly 1.0 belongs to the last bin, not to a bin of its own.
    index = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=probs, minlength=n_bins) / counts
        frequency = np.bincount(index, weights=targets, minlength=n_bins) / counts
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "counts": counts, "mean_p_fake": confidence,
            "fraction_fake": frequency}  # fmt: skip


def expected_calibration_error(targets: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Sum over equal-width bins of p(fake) of (share of images in the bin) x |share of fakes - mean p(fake)|."""
    bins = reliability_bins(targets, probs, n_bins)
    filled = bins["counts"] > 0
    gaps = np.abs(bins["fraction_fake"][filled] - bins["mean_p_fake"][filled])
    return float(np.sum(bins["counts"][filled] * gaps) / bins["counts"].sum())


def brier_score(targets: np.ndarray, probs: np.ndarray) -> float:
    """Mean squared difference between p(fake) and the 0/1 truth."""
    return float(brier_score_loss(np.asarray(targets, dtype=int), np.asarray(probs, dtype=float), pos_label=1))


def calibration_figures(targets: np.ndarray, logits: np.ndarray, temperature: float, n_bins: int) -> dict:
    """ECE and Brier at the stored temperature and without it (temperature 1)."""
    calibrated, raw = fake_probability(logits, temperature), fake_probability(logits)
    return {
        "temperature": float(temperature),
        "ece": expected_calibration_error(targets, calibrated, n_bins),
        "brier": brier_score(targets, calibrated),
        "ece_uncalibrated": expected_calibration_error(targets, raw, n_bins),
        "brier_uncalibrated": brier_score(targets, raw),
        "ece_bins": int(n_bins),
    }
