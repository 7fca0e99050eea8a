"""task=test: evaluate a checkpoint once on the test CSV and write metrics_test.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from deepfake.engine.evaluate import predict
from deepfake.engine.metrics import classification_metrics
from deepfake.engine.trainer import DamagedImageLog
from deepfake.engine.precision import resolve_device, resolve_precision
from deepfake.inference.predictions import damaged_reasons, item_rows, prediction_table, write_predictions
from deepfake.models import detector_from_checkpoint
from deepfake.tasks import builders
from deepfake.tasks.display import fmt_metric
from deepfake.tracking.checkpoint import atomic_write_text, load_checkpoint

log = logging.getLogger(__name__)


def evaluate_checkpoint(checkpoint_path: Path, cfg: DictConfig, out_dir: Path) -> dict:
    """Scores on ``dataset.test_csv`` with the checkpoint's own preprocessing and threshold."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = detector_from_checkpoint(checkpoint)
    preprocess = model.preprocess  # the checkpoint's own, img_size included
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    builders.ensure_dataset(cfg.dataset)
    test_set = builders.make_split(cfg.dataset, "test_csv", builders.eval_transform(preprocess))
    loader = builders.make_loader(test_set, cfg.dataset, train=False, device=device)
    preds = predict(model.to(device), loader, device, precision)
    DamagedImageLog().record("test", test_set, preds.damaged)
    threshold = float(checkpoint.get("threshold", cfg.train.threshold))
    # Per image, as task=predict writes it: the same images give the same rows there.
    damaged = damaged_reasons(test_set, preds.damaged)
    write_predictions(prediction_table(item_rows(test_set), preds.probs, threshold, damaged, labelled=True),
                      out_dir / "predictions.csv")  # fmt: skip
    metrics = {
        **classification_metrics(preds.targets, preds.probs, threshold),
        "n_damaged": len(preds.damaged),
        "checkpoint": str(checkpoint_path),
        "run_name": checkpoint.get("run_name"),
        "test_csv": str(cfg.dataset.test_csv),
        "evaluated_at": builders.now_iso(),
    }
    atomic_write_text(out_dir / "metrics_test.json", json.dumps(metrics, indent=2))
    log.info(
        "test on %d images: auc=%s acc=%.4f eer=%s (%s)",
        metrics["n_samples"], fmt_metric(metrics["auc"]), metrics["accuracy"], fmt_metric(metrics["eer"]),
        out_dir / "metrics_test.json",
    )  # fmt: skip
    return metrics


def run(cfg: DictConfig) -> float | None:
    path = builders.resolve_checkpoint(cfg.get("ckpt"), cfg, what="ckpt")
    out_dir = builders.run_dir()
    metrics = evaluate_checkpoint(path, cfg, out_dir)
    registry = builders.open_registry(cfg)
    if metrics["run_name"]:
        registry.update_run(metrics["run_name"], missing_ok=True, test_metrics=registry_view(metrics))
    return metrics["auc"]


def registry_view(metrics: dict) -> dict:
    """The headline test figures kept in the registry; the full report stays in metrics_test.json."""
    keys = ("auc", "ap", "eer", "accuracy", "real_accuracy", "fake_accuracy", "f1", "log_loss", "n_samples", "n_damaged")
    return {key: metrics[key] for key in keys} | {"test_csv": metrics["test_csv"], "evaluated_at": metrics["evaluated_at"]}
