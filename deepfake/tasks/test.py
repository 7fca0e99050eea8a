"""task=test: evaluate a checkpoint on the test CSV (and every ``eval.sets`` entry) at its stored
operating point -> metrics_test.json, the run dir's eval/ PNGs and report.html.

The decision rule (threshold, temperature) comes from the checkpoint, where training stored what
it chose on validation; ``eval.threshold`` overrides the threshold and is recorded as an override.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from deepfake.data.damaged import DamagedImageLog
from deepfake.data.manifest import file_sha256
from deepfake.engine.evaluate import fake_probability
from deepfake.errors import DataError
from deepfake.evaluation import plots
from deepfake.evaluation import report as html_report
from deepfake.evaluation.decision import DecisionRule, decision_rule
from deepfake.evaluation.perturbations import KINDS
from deepfake.evaluation.summary import TABLE_METRICS, summarise, table_row
from deepfake.inference.predictions import (
    damaged_reasons,
    item_rows,
    p_fake_per_item,
    prediction_table,
    write_predictions,
)
from deepfake.reports.html import write_document
from deepfake.tasks import checkpoints, data_setup, session
from deepfake.tasks.display import fmt_metric
from deepfake.tasks.preflight import scan_splits
from deepfake.tasks.scoring import Scorer, eval_sets, perturbations, summary_settings
from deepfake.tracking.checkpoint import atomic_write_text, load_checkpoint
from deepfake.tracking.loggers import Tracker

log = logging.getLogger(__name__)

TRAINING_CURVES = "training_curves.png"  # written by task=train in its run dir


def evaluate_checkpoint(
    checkpoint_path: Path,
    cfg: DictConfig,
    out_dir: Path,
    damaged: DamagedImageLog | None = None,
    trackers: Sequence[Tracker] = (),
    step: int = 0,
) -> dict:
    """Score every set, summarise, and write metrics_test.json (and with eval.report the pictures);
    ``trackers`` get the test's figures, plots and files at ``step`` (a training's last step)."""
    checkpoint = load_checkpoint(checkpoint_path)
    trained_at = (checkpoint.get("preprocess") or {}).get("img_size")
    if "generate" in cfg.dataset and trained_at is not None and str(cfg.dataset.img_size) != str(trained_at):
        # The embedded set has a folder per dataset.img_size, so the setting picks the images; the model
        # reads them at its own size. A run tested on another size's images says so.
        log.warning("%s was trained at %s px; dataset.img_size=%s picks the test images, which it reads resized "
                    "to %s px (add dataset.img_size=%s to test on the images it was trained on)", checkpoint_path,
                    trained_at, cfg.dataset.get("img_size"), trained_at, trained_at)  # fmt: skip
    rule = decision_rule(checkpoint, cfg.eval.threshold)
    settings = summary_settings(cfg)
    sets = eval_sets(cfg)
    chosen_perturbations = perturbations(cfg) if cfg.eval.robustness else []
    data_setup.ensure_dataset(cfg.dataset)
    scorer = Scorer(checkpoint, cfg, damaged)
    scored = {name: scorer.score(name, csv, root) for name, csv, root in sets}
    summaries = {name: summarise(preds.targets, preds.logits, rule, settings) for name, preds in scored.items()}
    test = scored["test"]
    _write_predictions(scorer.datasets["test"], test, rule, out_dir)
    metrics = {
        **summaries["test"],
        "decision_rule": rule.as_dict(),
        "threshold_source": rule.source,
        "threshold_policy": rule.policy,
        "temperature": rule.temperature,
        "validation_operating_point": checkpoint.get("operating_point"),
        "sets": [_set_row(name, csv, summaries[name]) for name, csv, _ in sets],
        "robustness": _robustness(scorer, cfg, rule, test, chosen_perturbations) if chosen_perturbations else None,
        "n_damaged": len(test.damaged),
        "checkpoint": str(checkpoint_path),
        "run_name": checkpoint.get("run_name"),
        "test_csv": os.path.abspath(str(cfg.dataset.test_csv)),  # compared by task=test: one spelling
        # What the figures are of: the embedded set regenerated at another size keeps its CSV's path.
        "test_csv_sha256": file_sha256(Path(str(cfg.dataset.test_csv))),
        "evaluated_at": session.now_iso(),
    }
    if cfg.eval.report:
        pictures = _pictures(metrics, test.targets.astype(int), test.logits, rule, out_dir)
        metrics["report"] = str(write_document(out_dir / "report.html", html_report.render(metrics, pictures)))
        _log_images(trackers, pictures, step)
    atomic_write_text(out_dir / "metrics_test.json", json.dumps(metrics, indent=2))
    _log_summary(metrics, out_dir)
    _track(trackers, metrics, out_dir, step)
    return metrics


def _write_predictions(dataset, preds, rule: DecisionRule, out_dir: Path) -> None:
    """predictions.csv, one row per test image as task=predict writes it: the same images give the same rows."""
    probs = p_fake_per_item(len(dataset), preds, rule.temperature)
    table = prediction_table(item_rows(dataset), probs, rule.threshold, damaged_reasons(dataset, preds.damaged),
                             labelled=True)  # fmt: skip
    write_predictions(table, out_dir / "predictions.csv")


def _set_row(name: str, csv: str, summary: dict) -> dict:
    return {"set": name, "csv": csv, **{k: summary[k] for k in (*TABLE_METRICS, "n_samples", "intervals")}}


def _robustness(scorer: Scorer, cfg: DictConfig, rule: DecisionRule, clean, chosen) -> list[dict]:
    """One row per perturbation: the test set re-scored with every image degraded the same way."""
    rows = []
    for perturbation in chosen:
        if perturbation.kind == "none":
            preds = clean  # the reference: the test scores themselves
        else:
            preds = scorer.score("test", str(cfg.dataset.test_csv), perturbation=perturbation)
        row = {"perturbation": perturbation.kind, "severity": perturbation.severity,
               **table_row(preds.targets, preds.logits, rule)}  # fmt: skip
        log.info("robustness %s: auc=%s acc=%.4f", perturbation.name, fmt_metric(row["auc"]), row["accuracy"])
        rows.append(row)
    return rows


def _pictures(metrics: dict, targets: np.ndarray, logits: np.ndarray, rule: DecisionRule, out_dir: Path) -> dict:
    """Every plot as PNG bytes, also written to the run dir's eval/."""
    probs = rule.p_fake(logits)
    pictures = {"confusion": plots.confusion_png(metrics["confusion_matrix"], rule.threshold)}
    if len(np.unique(targets)) == 2:
        pictures["roc"] = plots.roc_png(targets, logits, probs, rule.threshold, metrics["tpr_at_fpr"])
        pictures["pr"] = plots.pr_png(targets, logits)
    pictures["histogram"] = plots.histogram_png(targets, probs, rule.threshold)
    reliability = {"p(fake), temperature 1": fake_probability(logits)}
    if rule.temperature != 1.0:
        reliability[f"after temperature {rule.temperature:.3g}"] = probs
    pictures["reliability"] = plots.reliability_png(targets, reliability, metrics["calibration"]["ece_bins"])
    if metrics["robustness"]:
        pictures["robustness"] = plots.robustness_png(metrics["robustness"], {k: v[0] for k, v in KINDS.items()})
    if len(metrics["sets"]) > 1:
        pictures["generalisation"] = plots.generalisation_png(metrics["sets"])
    folder = out_dir / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    for name, png in pictures.items():
        (folder / f"{name}.png").write_bytes(png)
    if (out_dir / TRAINING_CURVES).is_file():  # a training run: its curves join the report
        pictures["training_curves"] = (out_dir / TRAINING_CURVES).read_bytes()
    return pictures


def _log_images(trackers: Sequence[Tracker], pictures: dict[str, bytes], step: int) -> None:
    """The plots as tracker images, under eval/<name>."""
    for name, png in pictures.items():
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        for tracker in trackers:
            tracker.log_image(f"eval/{name}", rgb.transpose(2, 0, 1), step=step)


def _track(trackers: Sequence[Tracker], metrics: dict, out_dir: Path, step: int) -> None:
    """The headline numbers of metrics_test.json as ``test/<name>``, and the files themselves."""
    figures = {f"test/{key}": value for key, value in metrics.items() if isinstance(value, int | float)
               and not isinstance(value, bool)}  # fmt: skip
    files = [out_dir / name for name in ("metrics_test.json", "report.html") if (out_dir / name).is_file()]
    for tracker in trackers:
        tracker.log_metrics(figures, step=step)
        for path in files:
            tracker.log_artifact(path)


def _log_summary(metrics: dict, out_dir: Path) -> None:
    intervals = metrics["intervals"] or {}

    def with_interval(key: str) -> str:
        low_high = intervals.get(key)
        return fmt_metric(metrics[key]) + (f" [{low_high[0]:.4f}, {low_high[1]:.4f}]" if low_high else "")

    rule = metrics["decision_rule"]
    log.info(
        "test on %d images: auc=%s ap=%s eer=%s acc=%s at threshold %.6g (%s%s), acc=%.4f at 0.5 (%s)",
        metrics["n_samples"], with_interval("auc"), with_interval("ap"), with_interval("eer"), with_interval("accuracy"),
        rule["threshold"], rule["source"], f", policy {rule['policy']}" if rule["policy"] else "",
        metrics["accuracy_at_0.5"], out_dir / "metrics_test.json",
    )  # fmt: skip
    for row in metrics["sets"][1:]:
        log.info("set %s (%d images): auc=%s real_acc=%s fake_acc=%s", row["set"], row["n_samples"],
                 fmt_metric(row["auc"]), fmt_metric(row["real_accuracy"]), fmt_metric(row["fake_accuracy"]))  # fmt: skip


def check_test_images(cfg: DictConfig) -> None:
    """Every image of every set task=test scores, decoded once first as training checks its own
    (answered from the scan memo when unchanged): a test CSV read under the wrong root scored black
    stand-ins only, and its AUC of 0.5 replaced the run's test figures in the registry. The dataset
    must be on disk (``data_setup.ensure_dataset``)."""
    if not cfg.dataset.scan_images:  # nothing to scan: the CSVs need not be read
        return
    reader = instantiate(cfg.dataset.reader)
    for name, csv, root in eval_sets(cfg):
        dataset = reader(csv_path=csv, **({"root_dir": root} if root else {}))
        try:
            scan_splits(
                cfg.dataset, {name: dataset}, "dataset.root_dir" if root is None else f"eval.sets.{name}.root_dir"
            )
        except DataError as err:
            raise DataError(f"{name} set: {err}") from None


def run(cfg: DictConfig) -> float | None:
    path = checkpoints.resolve_checkpoint(cfg.get("ckpt"), cfg, what="ckpt")
    data_setup.ensure_dataset(cfg.dataset)
    check_test_images(cfg)  # before anything is scored, written or registered
    out_dir = session.run_dir()
    with session.trackers(cfg) as trackers:
        metrics = evaluate_checkpoint(path, cfg, out_dir, trackers=trackers)
    registry = session.open_registry(cfg)
    if metrics["run_name"]:
        kept = (registry.get(metrics["run_name"]) or {}).get("test_metrics") or {}
        own = kept.get("test_csv")
        if own is not None and (os.path.abspath(own), kept.get("test_csv_sha256", metrics["test_csv_sha256"])) != (
            metrics["test_csv"],
            metrics["test_csv_sha256"],
        ):  # another CSV, or other contents under its path (the embedded set regenerated), or another img_size
            log.info("the registry entry of %s keeps its test figures on %s (as it was then); these, on %s, are in %s",
                     metrics["run_name"], own, metrics["test_csv"], out_dir / "metrics_test.json")  # fmt: skip
        elif cfg.eval.threshold is not None:  # a threshold tried out: not the run's own operating point
            log.info("the registry entry of %s keeps its test figures at its own threshold; these, at "
                     "eval.threshold=%s, are in %s", metrics["run_name"], cfg.eval.threshold,
                     out_dir / "metrics_test.json")  # fmt: skip
        else:
            registry.update_run(metrics["run_name"], missing_ok=True, test_metrics=registry_view(metrics))
    return metrics["auc"]


def registry_view(metrics: dict) -> dict:
    """The headline test figures kept in the registry; the full report stays in metrics_test.json."""
    keys = ("auc", "ap", "eer", "accuracy", "accuracy_at_0.5", "real_accuracy", "fake_accuracy", "f1", "log_loss",
            "threshold", "threshold_source", "threshold_policy", "temperature", "intervals", "n_samples", "n_damaged")  # fmt: skip
    view = {key: metrics[key] for key in keys} | {"ece": metrics["calibration"]["ece"]}
    return view | {key: metrics[key] for key in ("test_csv", "test_csv_sha256", "evaluated_at")}
