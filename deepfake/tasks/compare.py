"""task=compare: registered runs side by side (validation figures, operating point, test figures
with their intervals) as a table and as compare.csv in the run dir."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from omegaconf import DictConfig

from deepfake.errors import ConfigError
from deepfake.evaluation.bootstrap import METRICS as INTERVAL_METRICS
from deepfake.tasks import session
from deepfake.tasks.display import print_comparison
from deepfake.tasks.registry import runs_of_sweep
from deepfake.tracking.checkpoint import atomic_write_text

log = logging.getLogger(__name__)

COLUMNS = [
    "run_name", "status", "backbone", "dataset", "best_val_auc", "best_epoch",
    "threshold", "threshold_policy", "temperature", "val_accuracy_at_threshold",
    "test_auc", "test_auc_low", "test_auc_high", "test_ap", "test_ap_low", "test_ap_high",
    "test_eer", "test_eer_low", "test_eer_high", "test_accuracy", "test_accuracy_low", "test_accuracy_high",
    "test_accuracy_at_0.5", "test_real_accuracy", "test_fake_accuracy", "test_ece", "test_threshold_source",
    "test_csv", "run_dir",
]  # fmt: skip


def select_runs(runs: list[dict], names: list[str], dataset: str | None, backbone: str | None) -> list[dict]:
    """The named runs (in the order given) or every run, then only those of ``dataset`` and ``backbone``."""
    if names:
        by_name = {run["run_name"]: run for run in runs}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise ConfigError(f"compare.runs: {', '.join(missing)} not in the registry, or not in compare.sweep; "
                              "task=registry lists the runs")  # fmt: skip
        runs = [by_name[name] for name in names]
    return [
        run for run in runs
        if (dataset is None or run.get("dataset") == dataset) and (backbone is None or run.get("backbone") == backbone)
    ]  # fmt: skip


def comparison_row(entry: dict) -> dict:
    """One run's figures, flat: a CSV row and a table row."""
    point = entry.get("operating_point") or {}
    test = entry.get("test_metrics") or {}
    intervals = test.get("intervals") or {}
    row = {
        key: entry.get(key)
        for key in ("run_name", "status", "backbone", "dataset", "best_val_auc", "best_epoch", "run_dir")
    }
    row |= {"threshold": point.get("threshold"), "threshold_policy": point.get("policy"),
            "temperature": point.get("temperature"), "val_accuracy_at_threshold": point.get("accuracy")}  # fmt: skip
    for key in ("auc", "ap", "eer", "accuracy", "accuracy_at_0.5", "real_accuracy", "fake_accuracy", "ece", "test_csv"):
        row[key if key == "test_csv" else f"test_{key}"] = test.get(key)
    row["test_threshold_source"] = test.get("threshold_source")
    for key in INTERVAL_METRICS:
        low_high = intervals.get(key) or (None, None)
        row[f"test_{key}_low"], row[f"test_{key}_high"] = low_high
    return row


def run(cfg: DictConfig) -> None:
    settings = cfg.compare
    registry = session.open_registry(cfg)
    runs = registry.runs()
    if settings.sweep:
        runs = runs_of_sweep(runs, str(settings.sweep), Path(cfg.paths.multirun_dir), key="compare.sweep")
    runs = select_runs(runs, session.text_list(settings.runs), settings.dataset, settings.backbone)
    rows = [comparison_row(entry) for entry in runs]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    path = session.run_dir() / "compare.csv"
    atomic_write_text(path, text.getvalue())
    log.info("%d run(s) compared: %s", len(rows), path)
    print_comparison(rows, registry_path=cfg.paths.registry, csv_path=str(path))
