"""The shortcut baseline: how well can real and fake be told apart without looking at a face?

A gradient-boosted tree model (scikit-learn) is fitted on the train split's face-free features
(deepfake.audit.features) and scored on the test split: once with every feature, once per group.
An AUC far above 0.5 means the two classes were stored or sourced differently, and a detector
trained on this data can score well by learning that instead of faces.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from deepfake.audit.features import FEATURE_GROUPS, FEATURES
from deepfake.audit.verdict import FAIL, PASS, WARN, Verdict

ALL_FEATURES = "all features"


def baseline_auc(
    train: pd.DataFrame, train_target: np.ndarray, test: pd.DataFrame, test_target: np.ndarray, seed: int
) -> float | None:
    """Test AUC of a small boosted-tree model fitted on ``train``; None when either split holds one
    class: a model fitted on one class scores a constant, and its AUC of 0.5 read as "no shortcut"."""
    if len(np.unique(test_target)) < 2 or len(np.unique(train_target)) < 2:
        return None
    # Depth and rounds are kept small: a shortcut worth reporting is a coarse one, and the model must
    # fit 100k rows in seconds. NaN (a feature a format lacks, a damaged file) is handled natively.
    # A leaf may hold a tenth of the smaller class (at most sklearn's default 20): with that default,
    # a class of fewer than 20 training images could never get a leaf of its own, and a storage
    # shortcut that splits the classes perfectly scored AUC 0.5.
    minority = int(np.bincount(train_target.astype(int)).min())
    model = HistGradientBoostingClassifier(max_iter=100, max_leaf_nodes=15, random_state=seed,
                                           min_samples_leaf=max(1, min(20, minority // 10)))  # fmt: skip
    # One OpenMP thread: on a shared or busy CPU, OpenMP's spinning threads make these small fits
    # ten times slower, not faster.
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(train.to_numpy(np.float64), train_target)
        scores = model.predict_proba(test.to_numpy(np.float64))[:, 1]
    return float(roc_auc_score(test_target, scores))


def unmeasurable(target: np.ndarray, readable: np.ndarray, parts: dict[str, np.ndarray]) -> str | None:
    """Why the baseline cannot be measured on ``parts`` (name -> mask of images it is fitted or scored
    on), or None. Unreadable images have only their file's facts (size, name): a test split of them
    alone scored an AUC on file names and passed as "no shortcut found"."""
    for name, mask in parts.items():
        if len(np.unique(target[mask])) < 2:
            return f"the {name} needs both classes"
    for name, mask in parts.items():
        unread = [
            label for value, label in ((0, "real"), (1, "fake")) if not (mask & readable & (target == value)).any()
        ]
        if unread:
            return f"no {' or '.join(unread)} image of the {name} could be read"
    return None


def judge_auc(auc: float | None, warn_auc: float, fail_auc: float, cause: str | None = None) -> Verdict:
    if auc is None:
        return Verdict(WARN, f"not measured: {cause or 'a split holds one class'}")
    # Below 0.5 is not a shortcut: what the model learnt on train does not hold on test (chance, on
    # few images). A detector exploits only what carries over.
    if auc >= fail_auc:
        return Verdict(FAIL, f"AUC {auc:.3f}: a detector can reach this without looking at faces")
    if auc >= warn_auc:
        return Verdict(WARN, f"AUC {auc:.3f}: the classes differ in how they were stored or sourced")
    return Verdict(PASS, f"AUC {auc:.3f}: no shortcut found")


def shortcut_check(
    features: pd.DataFrame, target: np.ndarray, split: np.ndarray, *, seed: int, warn_auc: float, fail_auc: float,
    train_split: str = "train", test_split: str = "test", readable: np.ndarray | None = None,
) -> dict:  # fmt: skip
    """Baseline AUC with all features and per group, each with its verdict, and per-class distributions.
    With one split to audit (``train_split == test_split``) the baseline is judged on a seeded, stratified
    30% of it held out from its fit: scored on the images it was fitted on, it reported a training AUC.
    ``readable``: which images could be decoded (default all)."""
    is_train, is_test = split == train_split, split == test_split
    route = f"{train_split} -> {test_split}"
    parts = {f"{test_split} split": is_test, f"{train_split} split": is_train}
    if train_split == test_split:
        is_train, is_test = _held_out(np.flatnonzero(is_train), target, seed, len(split))
        route = f"{train_split}: 70% -> 30% held out"
        parts = {
            f"{train_split} split": split == train_split,
            f"held-out 30% of the {train_split} split": is_test,
            f"70% of the {train_split} split fitted on": is_train,
        }
    cause = unmeasurable(target, np.ones(len(target), bool) if readable is None else readable, parts)
    groups = {ALL_FEATURES: FEATURES, **FEATURE_GROUPS}
    results = {}
    for group, columns in groups.items():
        auc = None if cause else baseline_auc(features.loc[is_train, columns], target[is_train],
                                              features.loc[is_test, columns], target[is_test], seed)  # fmt: skip
        verdict = judge_auc(auc, warn_auc, fail_auc, cause)
        results[group] = {"auc": auc, "verdict": verdict.level, "message": verdict.message}
    overall = results[ALL_FEATURES]
    return {
        "verdict": Verdict(overall["verdict"], f"{overall['message']} ({route}, {len(FEATURES)} features)"),
        "groups": results,
        "n_train": int(is_train.sum()),
        "n_test": int(is_test.sum()),
        "distributions": feature_distributions(features, target),
    }


def _held_out(inside: np.ndarray, target: np.ndarray, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held out) masks over ``n`` images: 70/30 of ``inside``, stratified where each class allows."""
    from sklearn.model_selection import train_test_split

    classes = np.unique(target[inside], return_counts=True)[1]
    stratify = target[inside] if len(classes) == 2 and classes.min() >= 2 else None
    fit, held = train_test_split(inside, test_size=0.3, stratify=stratify, random_state=seed)
    return np.isin(np.arange(n), fit), np.isin(np.arange(n), held)


def feature_distributions(features: pd.DataFrame, target: np.ndarray) -> dict:
    """Per feature and class (all splits): mean, std and quartiles of the images that could be read."""
    summary = {}
    for column in features.columns:
        summary[column] = {}
        for name, label in (("real", 0), ("fake", 1)):
            values = features.loc[target == label, column].dropna()
            if values.empty:
                summary[column][name] = None
                continue
            q1, median, q3 = np.percentile(values, [25, 50, 75])
            summary[column][name] = {
                "mean": float(values.mean()), "std": float(values.std(ddof=0)),
                "q1": float(q1), "median": float(median), "q3": float(q3),
            }  # fmt: skip
    return summary
