"""The decision threshold on p(fake): chosen on validation scores by a policy at the end of
training and stored in best.pth (deepfake.evaluation.decision turns it back into the rule every task
applies).

Policies:
- ``eer``: the ROC point where the false-positive rate (reals called fake) meets the false-negative
  rate (fakes called real);
- ``fpr@<rate>`` (``fpr@0.01``): the lowest threshold whose real images are called fake at most
  at that rate, i.e. the most fakes caught within that false-alarm budget;
- ``fixed``: a given threshold.

An image is called fake when p(fake) >= threshold. The chosen thresholds are scores of validation
images, read off scikit-learn's ROC with every point kept.
"""

from __future__ import annotations

import math
import re

import numpy as np
from sklearn import metrics as skm

from deepfake.engine.evaluate import fake_probability
from deepfake.errors import ConfigError
from deepfake.evaluation.calibration import calibration_figures, fit_temperature
from deepfake.evaluation.decision import check_threshold

_FPR_POLICY = re.compile(r"^fpr@(?P<rate>[0-9.eE+-]+)$")
POLICIES = ("eer", "fpr@<rate>", "fixed")


def parse_policy(policy: str, fixed_threshold: float | None = None) -> tuple[str, float | None]:
    """``(kind, value)``: ("eer", None), ("fpr", rate) or ("fixed", threshold); ConfigError otherwise."""
    policy = str(policy).strip()
    if policy == "eer":
        return "eer", None
    if policy == "fixed":
        if fixed_threshold is None:
            raise ConfigError("eval.threshold_policy=fixed needs the threshold itself: add eval.threshold=<p_fake>")
        return "fixed", check_threshold(fixed_threshold)
    match = _FPR_POLICY.match(policy)
    if match:
        try:
            rate = float(match["rate"])
        except ValueError:
            rate = math.nan
        if 0.0 <= rate < 1.0:
            return "fpr", rate
    raise ConfigError(
        f"eval.threshold_policy={policy!r}; use eer, fixed, or fpr@<rate> with 0 <= rate < 1 (e.g. fpr@0.01)"
    )


def _roc(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ROC point of ``scores`` (p(fake), or the logits: any score ranking images as p(fake) does);
    the first one ("call nothing fake") gets a finite threshold just above the top score."""
    targets, scores = np.asarray(targets, dtype=int), np.asarray(scores, dtype=float)
    if len(np.unique(targets)) < 2:
        raise ValueError("an operating point needs real and fake images")
    fpr, tpr, thresholds = skm.roc_curve(targets, scores, drop_intermediate=False)
    thresholds[0] = np.nextafter(scores.max(), np.inf)
    return fpr, tpr, thresholds


def tpr_at_fpr(targets: np.ndarray, scores: np.ndarray, max_fpr: float) -> dict:
    """The most fakes caught with at most ``max_fpr`` of the reals called fake, and the threshold doing it."""
    fpr, tpr, thresholds = _roc(targets, scores)
    i = int(np.flatnonzero(fpr <= max_fpr)[-1])  # the ROC starts at fpr 0, so there is always one
    return {"max_fpr": float(max_fpr), "tpr": float(tpr[i]), "fpr": float(fpr[i]), "threshold": float(thresholds[i])}


def choose_threshold(
    targets: np.ndarray, scores: np.ndarray, policy: str, fixed_threshold: float | None = None
) -> float:
    """The threshold the policy picks on these (validation) scores, in their units."""
    kind, value = parse_policy(policy, fixed_threshold)
    if kind == "fixed":
        return value
    if kind == "fpr":
        return tpr_at_fpr(targets, scores, value)["threshold"]
    fpr, tpr, thresholds = _roc(targets, scores)
    return float(thresholds[int(np.argmin(np.abs(fpr - (1.0 - tpr))))])


def _threshold_on_logits(targets: np.ndarray, scaled: np.ndarray, policy: str, fixed_threshold: float | None) -> float:
    """The policy's threshold read off the ROC of ``scaled`` (logit / temperature), as the p(fake) it
    stands for. The same point as on p(fake) itself, except where p saturates: in float64 every scaled
    logit above ~37 is p = 1.0, a tie that would merge ROC points (a calibration's small temperature
    makes that common); a threshold is never above 1, so a "call nothing fake" point stays valid."""
    chosen = choose_threshold(targets, scaled, policy, fixed_threshold)
    if parse_policy(policy, fixed_threshold)[0] == "fixed":
        return chosen
    return as_p_fake(chosen, scaled)


def as_p_fake(chosen: float, scaled: np.ndarray) -> float:
    """A threshold on the scaled logits ``scaled`` as the p(fake) it stands for. Above every score ("call
    nothing fake", the ROC's first point) it stays above every p, where p allows: sigmoid of a point
    just above the top score rounds to the top image's own p, which would call that image fake."""
    if chosen > scaled.max():
        return min(float(np.nextafter(fake_probability(scaled).max(), np.inf)), 1.0)
    return float(fake_probability(chosen))


def rates_at(targets: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    """Accuracy overall and per class, TPR and FPR of the decisions p(fake) >= threshold."""
    targets = np.asarray(targets, dtype=int)
    called_fake = np.asarray(probs) >= threshold
    fake, real = targets == 1, targets == 0
    tpr = float(called_fake[fake].mean()) if fake.any() else None
    fpr = float(called_fake[real].mean()) if real.any() else None
    return {
        "accuracy": float((called_fake == fake).mean()),
        "real_accuracy": None if fpr is None else 1.0 - fpr,
        "fake_accuracy": tpr,
        "tpr": tpr,
        "fpr": fpr,
    }


def fit_operating_point(
    targets: np.ndarray,
    logits: np.ndarray,
    *,
    policy: str,
    fixed_threshold: float | None,
    calibrate: bool,
    ece_bins: int,
) -> dict:
    """What best.pth stores: ``threshold``, ``threshold_policy``, ``temperature`` and ``operating_point``
    (the validation figures at that threshold). Calibration comes first, so the threshold is a
    calibrated p(fake)."""
    targets = np.asarray(targets, dtype=int)
    temperature = fit_temperature(logits, targets) if calibrate else 1.0
    probs = fake_probability(logits, temperature)
    threshold = _threshold_on_logits(targets, np.asarray(logits, dtype=float) / temperature, policy, fixed_threshold)
    figures = {
        "chosen_on": "validation",
        "policy": str(policy),
        "threshold": threshold,
        "temperature": temperature,
        "n_real": int((targets == 0).sum()),
        "n_fake": int((targets == 1).sum()),
        **rates_at(targets, probs, threshold),
        "auc": float(skm.roc_auc_score(targets, logits)),  # the logits: p(fake) ties its saturated scores
        **{k: v for k, v in calibration_figures(targets, logits, temperature, ece_bins).items() if k != "temperature"},
    }
    return {
        "threshold": threshold,
        "threshold_policy": str(policy),
        "temperature": temperature,
        "operating_point": figures,
    }
