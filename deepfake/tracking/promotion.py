"""The promotion set: the images every candidate for the global best is judged on, by identity.

Two validation AUCs are only comparable when they were measured on the same images with the same
labels. A promotion set is identified by the sha256 of its image list (each image's path relative
to the dataset root, and its label, in CSV order): a copy of the dataset elsewhere is the same set,
a re-cut validation slice or a relabelled CSV is not. Each registry entry carries its own score with
the set's identity (``entry["promotion"]``), and scores on other sets measured later
(``entry["rescored"][key]``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

KEY_LENGTH = 16  # hex digits of the image-list hash that name a set in the registry


def set_identity(
    csv_path: str | os.PathLike, root_dir: str | os.PathLike, paths, targets, contents: Sequence[str]
) -> dict[str, Any]:
    """What makes a promotion set itself: the CSV file, and the images with their labels and bytes.

    ``paths`` are the resolved image paths in CSV order, ``targets`` their labels (1 = fake),
    ``contents`` each image's sha256: the same names over other pixels (the embedded set at another
    size, a re-encoded copy) are another set. The paths count relative to ``root_dir``, so a
    dataset moved to another disk stays the same set.
    """
    root = Path(os.path.abspath(root_dir))
    images = hashlib.sha256()
    for path, target, content in zip(paths, np.asarray(targets).tolist(), contents, strict=True):
        images.update(f"{os.path.relpath(path, root)}\t{int(target)}\t{content}\n".encode())
    digest = images.hexdigest()
    return {
        "csv": str(Path(csv_path).resolve()),
        "rows": len(paths),
        "csv_sha256": hashlib.sha256(Path(csv_path).read_bytes()).hexdigest(),
        "images_sha256": digest,
        "key": digest[:KEY_LENGTH],
    }


def describe(identity: dict[str, Any] | None) -> str:
    """``valid.csv (200 images, 3fa94c1e)``: short enough for a log line or a table cell."""
    if not identity:
        return "unknown set"
    return f"{Path(identity['csv']).name} ({identity['rows']} images, {identity['key'][:8]})"


def promotion_key(entry: dict[str, Any] | None) -> str | None:
    """The set an entry's own promotion score was measured on; None for entries without one."""
    promotion = (entry or {}).get("promotion") or {}
    return (promotion.get("set") or {}).get("key")


def score_on(entry: dict[str, Any] | None, key: str | None) -> float | None:
    """The entry's AUC on set ``key``: its own score, or one re-scored later; None when unknown.

    Entries registered without any promotion block (older registries, library callers that pass only
    ``best_val_auc``) share the key None and compare on ``best_val_auc``, as they always did.
    """
    if entry is None:
        return None
    if key is None and promotion_key(entry) is None:
        return finite_or_none(entry.get("best_val_auc"))
    if promotion_key(entry) == key:
        return finite_or_none(entry["promotion"].get("auc"))
    return finite_or_none(((entry.get("rescored") or {}).get(key) or {}).get("auc"))


def finite_or_none(value: Any) -> float | None:
    """The value as a float when it is a finite number, else None (NaN never ranks or promotes)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None
