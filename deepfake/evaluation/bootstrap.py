"""Confidence intervals for AUC, AP, EER and accuracy from a stratified bootstrap, vectorised.

Each resample draws the fakes from the fakes and the reals from the reals (with replacement), so
every resample keeps the test set's class balance and AUC stays defined. A resample is a vector of
counts over the original images; the scores are sorted once, and every metric of a block of
resamples comes from cumulative sums over those counts: no Python loop over resamples. The
intervals are percentile intervals.
"""

from __future__ import annotations

import numpy as np

METRICS = ("auc", "ap", "eer", "accuracy")
# Resamples handled at once: keeps each (block x images) array near 16 MB, whatever the test set's size.
_BLOCK_ELEMENTS = 2_000_000


def _resample_counts(rng: np.random.Generator, n: int, n_resamples: int) -> np.ndarray:
    """(n_resamples, n) counts: how often each of n items is drawn in each resample of size n."""
    draws = rng.integers(0, n, size=(n_resamples, n)) + n * np.arange(n_resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=n_resamples * n).reshape(n_resamples, n)


class _SortedScores:
    """The scores sorted once, high to low, with what every resample's metrics are read from."""

    def __init__(self, targets: np.ndarray, probs: np.ndarray, threshold: float, scores: np.ndarray | None) -> None:
        targets, probs = np.asarray(targets, dtype=int), np.asarray(probs, dtype=float)
        ranked = probs if scores is None else np.asarray(scores, dtype=float)  # see classification_metrics
        self.order = np.argsort(-ranked, kind="stable")
        ranked = ranked[self.order]
        self.is_fake = targets[self.order] == 1
        # Tied scores are one ROC point: keep the last image of each run of equal scores.
        self.group_ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
        self.correct = ((probs[self.order] >= threshold) == self.is_fake).astype(float)

    def metrics(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """AUC, AP, EER and accuracy of each row of ``counts`` (per image, in sorted order)."""
        tp = np.cumsum(counts * self.is_fake, axis=1)[:, self.group_ends]  # fakes at or above each score
        fp = np.cumsum(counts * ~self.is_fake, axis=1)[:, self.group_ends]
        zero = np.zeros((len(counts), 1))
        tpr = np.hstack([zero, tp / tp[:, -1:]])  # the ROC, from (0, 0) at "nothing is fake"
        fpr = np.hstack([zero, fp / fp[:, -1:]])
        auc = np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2, axis=1)
        called = tp + fp
        precision = np.divide(tp, called, out=np.ones(tp.shape), where=called > 0)
        ap = np.sum(np.diff(tpr, axis=1) * precision, axis=1)
        # EER as engine.metrics.equal_error_rate computes it: where FPR - FNR crosses zero, linearly
        # interpolated between the ROC points around the crossing (the last point has FPR 1, FNR 0).
        gap = fpr - (1.0 - tpr)
        after = np.argmax(gap >= 0, axis=1)
        rows = np.arange(len(counts))
        g0, g1 = gap[rows, after - 1], gap[rows, after]
        weight = np.divide(g0, g0 - g1, out=np.zeros_like(g0), where=g1 != g0)
        eer = fpr[rows, after - 1] + weight * (fpr[rows, after] - fpr[rows, after - 1])
        accuracy = counts @ self.correct / counts.sum(axis=1)
        return {"auc": auc, "ap": ap, "eer": eer, "accuracy": accuracy}


def weighted_metrics(
    targets: np.ndarray, probs: np.ndarray, threshold: float, counts: np.ndarray, scores: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The metrics of each row of ``counts`` (n_rows x n_images, how often each image is taken):
    row r gives what the metrics of the data set with image i repeated counts[r, i] times would be."""
    sorted_scores = _SortedScores(targets, probs, threshold, scores)
    return sorted_scores.metrics(np.asarray(counts)[:, sorted_scores.order])


def bootstrap_metrics(
    targets: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    *,
    n_resamples: int,
    seed: int,
    scores: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Each metric over ``n_resamples`` stratified resamples; one array of values per metric. The
    ranking metrics rank by ``scores`` when given (the logits; see classification_metrics)."""
    sorted_scores = _SortedScores(targets, probs, threshold, scores)
    fakes, reals = np.flatnonzero(sorted_scores.is_fake), np.flatnonzero(~sorted_scores.is_fake)
    n = len(sorted_scores.order)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // n)
    values: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        counts = np.zeros((size, n), dtype=np.int64)
        counts[:, fakes] = _resample_counts(rng, len(fakes), size)
        counts[:, reals] = _resample_counts(rng, len(reals), size)
        for name, value in sorted_scores.metrics(counts).items():
            values[name].append(value)
    return {name: np.concatenate(parts) for name, parts in values.items()}


def bootstrap_intervals(
    targets: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    *,
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
    scores: np.ndarray | None = None,
) -> dict[str, list[float] | None]:
    """``{metric: [low, high]}``, the central ``confidence`` share of the bootstrap values; None for
    every metric when a class is missing (nothing to resample from) or ``n_resamples`` is 0."""
    targets = np.asarray(targets, dtype=int)
    if n_resamples <= 0 or len(np.unique(targets)) < 2:
        return {name: None for name in METRICS}
    values = bootstrap_metrics(targets, probs, threshold, n_resamples=n_resamples, seed=seed, scores=scores)
    tail = (1.0 - confidence) / 2 * 100
    return {name: [float(v) for v in np.percentile(values[name], [tail, 100 - tail])] for name in METRICS}
