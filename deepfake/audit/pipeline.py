"""Run every check on a dataset's splits: one pass over the images, then basics, leakage, shortcuts
and spectra; write audit.json, audit.html and (when asked) de-leaked CSVs.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from deepfake.audit.basics import basics_check
from deepfake.audit.facts import gather_facts
from deepfake.audit.features import feature_table
from deepfake.audit.leakage import find_leaks, judge_leakage, leak_counts, rows_to_drop
from deepfake.audit.report import write_html_report
from deepfake.audit.shortcuts import shortcut_check
from deepfake.audit.spectra import crop_size, spectra_check
from deepfake.audit.verdict import FAIL, Verdict, worst
from deepfake.data.csv_dataset import KAGGLE_INDEX_COLUMN, read_raw_csv
from deepfake.data.scan import DEFAULT_SCAN_THREADS
from deepfake.errors import ConfigError, DataError
from deepfake.tracking.checkpoint import atomic_write_text

log = logging.getLogger(__name__)

CHECKS = ("basics", "leakage", "shortcuts", "spectra")


@dataclass
class AuditSettings:
    """The ``audit.*`` keys (conf/audit/default.yaml documents each)."""

    strict: bool = False
    write_clean_csvs: bool = False
    near_duplicate_distance: int = 10
    near_duplicate_min_correlation: float = 0.98
    spectrum_samples: int = 2000
    spectrum_split: str = "train"
    spectrum_max_size: int = 256
    spectrum_min_prominence_db: float = 6.0
    shortcut_warn_auc: float = 0.7
    shortcut_fail_auc: float = 0.9
    balance_tolerance: float = 0.1
    listed_pairs: int = 24
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self._check_types()
        if not 0 < self.near_duplicate_min_correlation <= 1:  # above 1 no pair is ever confirmed: leakage passes
            raise ConfigError(f"audit.near_duplicate_min_correlation={self.near_duplicate_min_correlation} must be "
                              "in (0, 1]")  # fmt: skip
        if self.balance_tolerance < 0 or self.listed_pairs < 0 or (self.threads is not None and self.threads < 1):
            raise ConfigError(f"audit.balance_tolerance={self.balance_tolerance} and audit.listed_pairs="
                              f"{self.listed_pairs} must be >= 0, audit.threads={self.threads} >= 1 or null")  # fmt: skip
        if not 0 <= self.near_duplicate_distance <= 31:
            raise ConfigError(f"audit.near_duplicate_distance={self.near_duplicate_distance} must be 0..31 "
                              "(bits of the 64-bit pHash that may differ)")  # fmt: skip
        if self.spectrum_samples < 1 or self.spectrum_max_size < 8:
            raise ConfigError("audit.spectrum_samples must be >= 1 and audit.spectrum_max_size >= 8")
        if not 0.5 <= self.shortcut_warn_auc <= self.shortcut_fail_auc <= 1.0:
            raise ConfigError(f"audit.shortcut_warn_auc={self.shortcut_warn_auc} and audit.shortcut_fail_auc="
                              f"{self.shortcut_fail_auc} must satisfy 0.5 <= warn <= fail <= 1")  # fmt: skip
        self.threads = int(self.threads or DEFAULT_SCAN_THREADS)

    def _check_types(self) -> None:
        """Numbers where numbers go: ``audit.threads=abc`` was int()'s traceback, and a text prominence
        numpy's, after every image had been read."""
        for item in fields(self):
            value, kind = getattr(self, item.name), item.type.removesuffix(" | None")
            if kind not in ("int", "float") or (value is None and item.type.endswith("None")):
                continue
            whole = isinstance(value, int) and not isinstance(value, bool)
            if not (whole or (kind == "float" and isinstance(value, float) and math.isfinite(value))):
                raise ConfigError(f"audit.{item.name}={value!r} is not {'an integer' if kind == 'int' else 'a number'}")


@dataclass
class Split:
    """One split as the dataset reader sees it: ``frame`` has path (absolute), target (1 = fake), row;
    ``key``: the dataset setting naming its CSV (train_csv, val_csv, test_csv), for the overrides that
    train on its clean CSV."""

    name: str
    csv_path: Path
    frame: pd.DataFrame
    key: str | None = None


def image_table(splits: list[Split], known_sha256: Mapping[str, str], threads: int, progress) -> pd.DataFrame:
    rows = pd.concat([split.frame[["path", "target", "row"]].assign(split=split.name) for split in splits],
                     ignore_index=True)  # fmt: skip
    facts = gather_facts(rows["path"].tolist(), known_sha256=known_sha256, threads=threads, progress=progress)
    return pd.concat([rows, facts.drop(columns="path")], axis=1)


def _spectrum_sample(images: pd.DataFrame, settings: AuditSettings) -> tuple[dict[str, list[str]], int]:
    split = settings.spectrum_split  # one of the audited splits (run_audit checks)
    readable = images[(images["split"] == split) & images["damaged"].isna()].drop_duplicates("path")
    rng = np.random.default_rng(settings.seed)
    sample = {}
    for target, name in ((0, "real"), (1, "fake")):
        paths = readable.loc[readable["target"] == target, "path"].to_numpy()
        sample[name] = sorted(rng.choice(paths, min(len(paths), settings.spectrum_samples), replace=False))
    sizes = [list(zip(chosen["width"], chosen["height"]))
             for chosen in (readable[readable["path"].isin(paths)] for paths in sample.values())]  # fmt: skip
    return sample, crop_size(sizes, settings.spectrum_max_size)


def leakage_check(images: pd.DataFrame, names: list[str], settings: AuditSettings) -> dict:
    leaks = find_leaks(images, names, settings.near_duplicate_distance, settings.near_duplicate_min_correlation)
    counts = leak_counts(leaks, images, names)

    def side(positions: pd.Series, prefix: str) -> dict:
        part = images.loc[positions.to_numpy(), ["split", "row", "path", "target"]]
        return {f"{prefix}_{key}": part[key].to_numpy() for key in part.columns}

    pairs = pd.DataFrame(
        {
            **side(leaks["earlier"], "a"),
            **side(leaks["later"], "b"),
            **{key: leaks[key].to_numpy() for key in ("kind", "distance", "correlation", "partners")},
        }
    )
    return {
        "near_duplicate_distance": settings.near_duplicate_distance,
        "near_duplicate_min_correlation": settings.near_duplicate_min_correlation,
        "counts": counts,
        "pairs": pairs.to_dict("records"),
        "drop_rows": rows_to_drop(leaks, images),
        "verdict": judge_leakage(counts, leaks),
    }


def write_clean_csvs(splits: list[Split], drop_rows: dict[str, list[int]], out_dir: Path) -> dict[str, dict]:
    """Each split's CSV as it was (every cell as written), minus the rows whose image duplicates one of
    an earlier split, as ``clean/<split>.csv`` (train, valid, test: two splits' CSVs of the same name
    no longer overwrite each other)."""
    written = {}
    for split in splits:
        raw = read_raw_csv(split.csv_path, as_text=True)
        drop = set(drop_rows.get(split.name, []))
        keep = [line not in drop for line in range(2, len(raw) + 2)]  # CSV line 1 is the header
        clean = raw[keep].rename(columns={KAGGLE_INDEX_COLUMN: ""})
        path = out_dir / "clean" / f"{split.name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, clean.to_csv(index=False))
        written[split.name] = {"path": str(path), "rows": len(clean), "dropped": len(drop)}
    return written


_PLAIN_PATH = re.compile(r"[\w./-]+", re.ASCII)  # what Hydra reads unquoted (its lexer: ASCII letters only)


def clean_overrides(splits: list[Split], written: dict[str, dict]) -> str:
    """The command-line overrides that train on the clean CSVs, shell- and Hydra-quoted. Not
    dataset.csv_dir=<run dir>/clean: dataset=batch takes train and valid from its batches_dir, so
    that ran on the leaky batch CSVs without a word."""
    overrides = []
    for split in (split for split in splits if split.key and split.name in written):
        path = written[split.name]["path"]
        value = path if _PLAIN_PATH.fullmatch(path) else "'" + path.replace("'", "\\'") + "'"
        overrides.append(shlex.quote(f"dataset.{split.key}={value}"))
    return " ".join(overrides)


def run_audit(
    splits: list[Split],
    settings: AuditSettings,
    out_dir: Path,
    *,
    title: str,
    known_sha256: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Every check on ``splits`` (earliest first: train, valid, test); writes the reports into ``out_dir``."""
    started = time.perf_counter()
    names = [split.name for split in splits]
    if settings.spectrum_split not in names:  # it used to fall back to the first split, silently
        raise ConfigError(f"audit.spectrum_split={settings.spectrum_split}: no such split here; use one of "
                          f"{', '.join(names)}")  # fmt: skip
    images = image_table(splits, known_sha256 or {}, settings.threads, progress)
    if images["damaged"].notna().all():  # a wrong image root: nothing to audit
        first = images.iloc[0]
        raise DataError(f"none of the {len(images)} images could be read (the first, {first['path']}: "
                        f"{first['damaged']}); check dataset.root_dir")  # fmt: skip
    seconds = {"read": time.perf_counter() - started}

    def timed(name: str, check: Callable[[], object]):
        begun = time.perf_counter()
        result = check()
        seconds[name] = time.perf_counter() - begun
        return result

    features = feature_table(images)
    test_split = "test" if "test" in names else names[-1]
    sample, size = _spectrum_sample(images, settings)
    report = {
        "title": title,
        "splits": {split.name: str(split.csv_path) for split in splits},
        "basics": timed("basics", lambda: basics_check(images, names, settings.balance_tolerance)),
        "leakage": timed("leakage", lambda: leakage_check(images, names, settings)),
        "shortcuts": timed("shortcuts", lambda: shortcut_check(
            features, images["target"].to_numpy(), images["split"].to_numpy(), seed=settings.seed,
            warn_auc=settings.shortcut_warn_auc, fail_auc=settings.shortcut_fail_auc, train_split=names[0],
            test_split=test_split, readable=images["damaged"].isna().to_numpy())),
    }  # fmt: skip
    report["spectra"], spectra = timed(
        "spectra", lambda: spectra_check(sample, size, settings.spectrum_min_prominence_db, settings.threads,
                                         settings.spectrum_split))  # fmt: skip
    if settings.write_clean_csvs:
        written = write_clean_csvs(splits, report["leakage"]["drop_rows"], out_dir)
        report["leakage"].update(clean_csvs=written, clean_overrides=clean_overrides(splits, written))
    report["verdict"] = worst(report[check]["verdict"].level for check in CHECKS)
    report["seconds"] = {**seconds, "total": time.perf_counter() - started}
    report["files"] = {"json": str(out_dir / "audit.json"), "html": str(out_dir / "audit.html")}
    atomic_write_text(out_dir / "audit.json", json.dumps(report, indent=2, default=_json_value) + "\n")
    write_html_report(out_dir / "audit.html", report, images, features, spectra, settings.listed_pairs)
    return report


def failed_checks(report: dict) -> list[str]:
    return [check for check in CHECKS if report[check]["verdict"].level == FAIL]


def _json_value(value):
    if isinstance(value, Verdict):
        return value.as_dict()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
