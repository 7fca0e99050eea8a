"""task=test: evaluate a checkpoint on the test CSV (and every ``eval.sets`` entry) at its stored
operating point -> metrics_test.json, the run dir's eval/ PNGs and report.html.

The decision rule (threshold, temperature) comes from the checkpoint, where training stored what
it chose on validation; ``eval.threshold`` overrides the threshold and is recorded as an override.
The run's registry entry takes the figures only when they are of its own test set (its configured
test CSV under its configured image root) at its own threshold, made with the settings its figures were
(eval.bootstrap, eval.confidence, seed, eval.ece_bins).
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
from deepfake.evaluation.decision import DecisionRule
from deepfake.evaluation.perturbations import KINDS
from deepfake.evaluation.summary import TABLE_METRICS, summarise, table_row
from deepfake.inference.predictions import (
    damaged_reasons,
    item_rows,
    p_fake_per_item,
    prediction_table,
    write_predictions,
)
from deepfake.reports.card_facts import configured_data, data_identity, recorded_config
from deepfake.reports.html import write_document
from deepfake.tasks import checkpoints, data_setup, session, values
from deepfake.tasks.display import fmt_metric
from deepfake.tasks.preflight import scan_splits
from deepfake.tasks.scoring import (
    Scorer,
    check_eval_settings,
    checkpoint_rule,
    eval_sets,
    perturbations,
    settings_not_applied,
    summary_settings,
)
from deepfake.tracking.checkpoint import atomic_write_text, load_checkpoint_and_sha256
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
    loaded: tuple[dict, str] | None = None,
) -> dict:
    """Score every set, summarise, and write metrics_test.json (and with eval.report the pictures);
    ``trackers`` get the test's figures, plots and files at ``step`` (a training's last step).
    ``loaded``: ``checkpoint_path`` already loaded, with the sha256 of the bytes it was loaded from."""
    # The sha256 of the bytes scored: hashed after scoring, a promotion in between named another file.
    checkpoint, checkpoint_sha256 = loaded or load_checkpoint_and_sha256(checkpoint_path)
    trained_at = (checkpoint.get("preprocess") or {}).get("img_size")
    if "generate" in cfg.dataset and trained_at is not None and str(cfg.dataset.img_size) != str(trained_at):
        # The embedded set has a folder per dataset.img_size, so the setting picks the images; the model
        # reads them at its own size. A run tested on another size's images says so.
        log.warning("%s was trained at %s px; dataset.img_size=%s picks the test images, which it reads resized "
                    "to %s px (add dataset.img_size=%s to test on the images it was trained on)", checkpoint_path,
                    trained_at, cfg.dataset.get("img_size"), trained_at, trained_at)  # fmt: skip
    rule = checkpoint_rule(checkpoint, cfg)
    settings = summary_settings(cfg)
    sets = eval_sets(cfg)
    chosen_perturbations = perturbations(cfg) if cfg.eval.robustness else []
    data_setup.ensure_dataset(cfg.dataset)
    scorer = Scorer(checkpoint, cfg, damaged)
    scored = {name: scorer.score(name, csv, root) for name, csv, root in sets}
    summaries = {name: summarise(preds.targets, preds.logits, rule, settings) for name, preds in scored.items()}
    test = scored["test"]
    test_csv, test_root_dir = data_identity(cfg.dataset.test_csv, cfg.dataset.root_dir)
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
        "checkpoint_sha256": checkpoint_sha256,  # a copy of an earlier best.pth has its path's name
        "run_name": checkpoint.get("run_name"),
        "test_csv": test_csv,  # with the root, compared by task=test: one spelling each
        "test_root_dir": test_root_dir,
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


def check_test_images(cfg: DictConfig, preprocess: dict | None = None) -> None:
    """Every image of every set task=test scores, decoded once first as training checks its own
    (answered from the scan memo when unchanged): a test CSV read under the wrong root scored black
    stand-ins only, and its AUC of 0.5 replaced the run's test figures in the registry. The dataset
    must be on disk (``data_setup.ensure_dataset``). With ``preprocess`` (a training's, whose end scores
    these sets) each set's decoded-image cache is built or found too, when ``dataset.cache`` asks for
    one: refused after training, it lost the tested and registered end of a trained run."""
    caching = preprocess is not None and str(cfg.dataset.get("cache", "none")) != "none"
    if not cfg.dataset.scan_images and not caching:  # nothing to scan: the CSVs need not be read
        return
    reader = instantiate(cfg.dataset.reader)
    for name, csv, root in eval_sets(cfg):
        dataset = reader(csv_path=csv, **({"root_dir": root} if root else {}))
        try:
            if cfg.dataset.scan_images:
                scan_splits(
                    cfg.dataset, {name: dataset}, "dataset.root_dir" if root is None else f"eval.sets.{name}.root_dir"
                )
        except DataError as err:
            raise DataError(f"{name} set: {err}") from None
        try:
            if caching:
                data_setup.attach_cache(dataset, cfg.dataset, preprocess)
        except DataError as err:
            raise DataError(f"{name} set (scored after training): {err}") from None


def run(cfg: DictConfig) -> float | None:
    path = checkpoints.resolve_checkpoint(cfg.get("ckpt"), cfg, what="ckpt")
    # The cheap refusals (an ONNX file, a last.pth without a threshold, eval.threshold=1.5, a bad eval.*
    # value) first: they were only made once every test image had been decoded.
    loaded = load_checkpoint_and_sha256(path)
    checkpoint = loaded[0]
    check_eval_settings(cfg)
    given = {values.override_key(override) for override in session.task_overrides()}
    not_applied = settings_not_applied(cfg, checkpoint_rule(checkpoint, cfg), given)
    if not_applied:
        log.warning("%s: these apply when a training chooses the operating point; task=test uses the one stored "
                    "in %s (eval.threshold=<p_fake> overrides its threshold)", " and ".join(not_applied), path)  # fmt: skip
    data_setup.ensure_dataset(cfg.dataset)
    check_test_images(cfg)  # before anything is scored, written or registered
    out_dir = session.run_dir()
    with session.trackers(cfg) as trackers:
        metrics = evaluate_checkpoint(path, cfg, out_dir, trackers=trackers, loaded=loaded)
    _record_in_registry(cfg, metrics, out_dir / "metrics_test.json")
    return metrics["auc"]


def _record_in_registry(cfg: DictConfig, metrics: dict, written: Path) -> None:
    """The run's registry figures replaced by these, when they are of its own test set at its own threshold."""
    registry = session.open_registry(cfg)
    entry = registry.get(metrics["run_name"]) if metrics["run_name"] else None
    if entry is None:  # a checkpoint from elsewhere: nothing to replace
        return
    own = _own_test_set(entry)
    if entry.get("checkpoint_sha256") not in (None, metrics["checkpoint_sha256"]):  # a copy of an earlier epoch's
        kept, these = "of its own best.pth", f"of another checkpoint, {metrics['checkpoint']}"
    elif metrics["threshold_source"] != "checkpoint":  # a threshold tried out: not the run's own operating point
        kept, these = "at its own threshold", f"at {metrics['threshold_source']}={metrics['threshold']}"
    elif own is None:
        kept = "(its config_resolved.yaml is gone: its own test set is unknown)"
        these = f"on {metrics['test_csv']} under {metrics['test_root_dir']}"
    elif any(value is not None and value != metrics[key] for key, value in own.items()):
        # another CSV or image root, or other contents under the CSV's path (the embedded set regenerated)
        kept = f"for its own test set, {own['test_csv']} under {own['test_root_dir']}"
        these = f"on {metrics['test_csv']} under {metrics['test_root_dir']}"
    elif differing := _other_settings(entry, metrics):
        # a quick eval.bootstrap=0 retest erased the intervals; another seed or eval.ece_bins moved them
        kept = f"made with {_spelled(_recorded_settings(entry), differing)}"
        these = f"with {_spelled(figure_settings(metrics), differing)}"
    else:
        registry.update_run(metrics["run_name"], missing_ok=True, test_metrics=registry_view(metrics))
        return
    log.info("the registry entry of %s keeps its test figures %s; these, %s, are in %s", metrics["run_name"], kept,
             these, written)  # fmt: skip


def _own_test_set(entry: dict) -> dict | None:
    """What a run's registry figures are of: the test CSV and image root of its config, with the CSV's
    sha256 when its figures recorded one for that CSV (or, its run dir gone, what its figures recorded);
    None when neither says. Not the first set tested: without a training-time test, a test of another
    CSV became the run's figures, and its own test set was then refused."""
    kept = entry.get("test_metrics") or {}
    kept_csv = os.path.abspath(kept["test_csv"]) if kept.get("test_csv") else None
    configured = configured_data(recorded_config(entry), "test")
    if configured is None and kept_csv is None:
        return None
    csv, root = configured or (kept_csv, kept.get("test_root_dir"))
    sha256 = kept.get("test_csv_sha256") if kept_csv == csv else None
    return {"test_csv": csv, "test_root_dir": root, "test_csv_sha256": sha256}


def figure_settings(metrics: dict) -> dict:
    """The settings besides the images and the decision rule that shape the registry's figures, by the
    keys that set them: the intervals' (confidence and seed only when there are resamples) and the ECE's."""
    bootstrap = metrics["bootstrap"]
    resampled = bootstrap["resamples"] > 0
    return {
        "eval.bootstrap": bootstrap["resamples"],
        "eval.confidence": bootstrap["confidence"] if resampled else None,
        "seed": bootstrap["seed"] if resampled else None,
        "eval.ece_bins": metrics["calibration"]["ece_bins"],
    }


def _other_settings(entry: dict, metrics: dict) -> list[str]:
    """The keys of figure_settings whose value differs from the one the registry's figures were made
    with, where replacing them would lose or move figures: a retest that adds intervals to figures made
    without them loses nothing, and replaces them. Figures registered before they recorded their
    settings say whether they had a bootstrap by their intervals: a retest without one keeps them."""
    view, current = entry.get("test_metrics") or {}, figure_settings(metrics)
    if "evaluated_with" not in view:
        return ["eval.bootstrap"] if _had_intervals(view) and current["eval.bootstrap"] == 0 else []
    recorded = view["evaluated_with"]
    differing = [key for key, value in current.items() if key in recorded and recorded[key] != value]
    if recorded.get("eval.bootstrap") == 0 and current["eval.bootstrap"] > 0:
        differing = [key for key in differing if key == "eval.ece_bins"]
    return differing


def _had_intervals(view: dict) -> bool:
    return any(value is not None for value in (view.get("intervals") or {}).values())


def _recorded_settings(entry: dict) -> dict:
    """What the registry's figures were made with, for the log line; of figures registered before they
    recorded it, only that they had a bootstrap (the one difference _other_settings finds in them)."""
    view = entry.get("test_metrics") or {}
    return view.get("evaluated_with") or {"eval.bootstrap": "some (intervals recorded)"}


def _spelled(settings: dict, keys: list[str]) -> str:
    return " ".join(f"{key}={settings[key]}" for key in keys if settings[key] is not None)


def registry_view(metrics: dict) -> dict:
    """The headline test figures kept in the registry; the full report stays in metrics_test.json."""
    keys = ("auc", "ap", "eer", "accuracy", "accuracy_at_0.5", "real_accuracy", "fake_accuracy", "f1", "log_loss",
            "threshold", "threshold_source", "threshold_policy", "temperature", "intervals", "n_samples", "n_damaged")  # fmt: skip
    view = {key: metrics[key] for key in keys} | {"ece": metrics["calibration"]["ece"]}
    view["evaluated_with"] = figure_settings(metrics)  # a retest with other settings leaves them (task=test)
    kept = ("checkpoint_sha256", "test_csv", "test_root_dir", "test_csv_sha256", "evaluated_at")
    return view | {key: metrics[key] for key in kept}
