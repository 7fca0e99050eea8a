"""The basics, per split and class: counts, balance, damaged files, sizes and modes, repeated rows."""

from __future__ import annotations

import pandas as pd

from deepfake.audit.verdict import FAIL, PASS, WARN, Verdict

CLASSES = {0: "real", 1: "fake"}


def _counts(images: pd.DataFrame, splits: list[str]) -> list[dict]:
    rows = []
    for split in splits:
        part = images[images["split"] == split]
        fake = int(part["target"].sum())
        rows.append({"split": split, "images": len(part), "real": len(part) - fake, "fake": fake,
                     "fake_share": fake / len(part) if len(part) else None})  # fmt: skip
    return rows


def _damaged(images: pd.DataFrame) -> list[dict]:
    broken = images[images["damaged"].notna()]
    return [{"split": s, "row": int(r), "path": p, "reason": why}
            for s, r, p, why in zip(broken["split"], broken["row"], broken["path"], broken["damaged"])]  # fmt: skip


def _top_values(images: pd.DataFrame, column: str, splits: list[str], limit: int = 5) -> list[dict]:
    """The most common values of ``column`` per split and class, with their counts."""
    rows = []
    for split in splits:
        for target, name in CLASSES.items():
            values = images.loc[(images["split"] == split) & (images["target"] == target), column].dropna()
            top = values.value_counts().head(limit)
            rows.append({"split": split, "class": name, "distinct": int(values.nunique()),
                         "top": {str(value): int(count) for value, count in top.items()}})  # fmt: skip
    return rows


def _repeated_rows(images: pd.DataFrame) -> list[dict]:
    """Rows that list an image already listed earlier in the same split (they weigh double)."""
    repeats = images[images.duplicated(["split", "path"], keep="first")]
    first_row = images.drop_duplicates(["split", "path"]).set_index(["split", "path"])["row"]
    return [{"split": s, "row": int(r), "path": p, "repeats_row": int(first_row[(s, p)])}
            for s, r, p in zip(repeats["split"], repeats["row"], repeats["path"])]  # fmt: skip


def basics_check(images: pd.DataFrame, splits: list[str], balance_tolerance: float) -> dict:
    """``images``: one row per CSV row with split, row, path, target and the image facts."""
    sized = images.assign(size=[f"{int(w)}x{int(h)}" if pd.notna(w) and pd.notna(h) else None
                                for w, h in zip(images.get("width"), images.get("height"))])  # fmt: skip
    report = {
        "counts": _counts(images, splits),
        "damaged": _damaged(images),
        "sizes": _top_values(sized, "size", splits),
        "modes": _top_values(images, "mode_name", splits),
        "repeated_rows": _repeated_rows(images),
    }
    report["verdict"] = _judge(report, balance_tolerance)
    return report


def _judge(report: dict, balance_tolerance: float) -> Verdict:
    one_class = [c["split"] for c in report["counts"] if not (c["real"] and c["fake"])]
    if one_class:
        return Verdict(FAIL, f"split(s) without both classes: {', '.join(one_class)}")
    problems = []
    unbalanced = [f"{c['split']} {c['fake_share']:.0%} fake" for c in report["counts"]
                  if abs(c["fake_share"] - 0.5) > balance_tolerance]  # fmt: skip
    if unbalanced:
        problems.append("unbalanced: " + ", ".join(unbalanced))
    if report["damaged"]:
        problems.append(f"{len(report['damaged'])} damaged file(s)")
    if report["repeated_rows"]:
        problems.append(f"{len(report['repeated_rows'])} repeated CSV row(s)")
    if problems:
        return Verdict(WARN, "; ".join(problems))
    total = sum(c["images"] for c in report["counts"])
    return Verdict(PASS, f"{total} images, balanced, none damaged, no repeated rows")
