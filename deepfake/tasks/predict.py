"""task=predict: score a user's images with a trained detector.

ckpt (run dir | .pth | model.onnx | the global best) + predict.input (image | folder | CSV)
-> [faces found and cropped] -> the eval transform and scoring loop of task=test -> predictions.csv,
with labels the task=test metrics, with predict.cam an overlay per image -> a summary table.
Only the checkpoint is needed: its own preprocessing, threshold and temperature are used.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from deepfake.data.image_files import ImageFileDataset
from deepfake.data.scan import list_for_message
from deepfake.engine.evaluate import predict
from deepfake.engine.fast_path import resolve_num_workers
from deepfake.engine.precision import resolve_device, resolve_precision
from deepfake.engine.stopping import init_worker
from deepfake.errors import ConfigError, DataError
from deepfake.inference import Row, discover_inputs, load_detector, prediction_table, write_predictions
from deepfake.inference.predictions import (
    COLUMNS,
    damaged_reasons,
    foreign_overlays,
    item_rows,
    p_fake_per_item,
    remove_overlays,
)
from deepfake.tasks import checkpoints, data_setup, session, values
from deepfake.tasks.display import print_predict_summary
from deepfake.tracking.checkpoint import atomic_write_text, make_folder
from deepfake.tracking.console import progress_bars

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float | None:
    settings = cfg.predict
    if settings.input is None:
        raise ConfigError("task=predict needs predict.input=<image | folder | CSV>")
    top_k = values.positive_int(settings.top_k, "predict.top_k")
    values.positive_int(settings.batch_size, "predict.batch_size")
    detector = load_detector(checkpoints.resolve_checkpoint(cfg.get("ckpt"), cfg, what="ckpt"))
    # Every setting is checked before anything is scored or written: a run refused after predictions.csv
    # was replaced left it beside the earlier run's metrics and overlays, or without its own.
    cam = _cam_settings(cfg, detector) if settings.cam else None
    rule = _decision_rule(detector, settings)
    threshold = rule.threshold
    inputs = discover_inputs(
        settings.input, root_dir=settings.root_dir, path_column=settings.path_column,
        label_column=settings.label_column,
        real_label=detector.real_label if settings.real_label is None else values.number(
            settings.real_label, "predict.real_label", int),
    )  # fmt: skip
    summary = _summary_settings(cfg) if inputs.labelled else None
    out = _output_file(settings.output)
    if inputs.source == "folder":  # an earlier predict's overlays, written into the folder it scores, are no input
        own = overlays_dir(out).resolve()
        inputs.paths = [path for path in inputs.paths if not Path(path).resolve().is_relative_to(own)]
    _refuse_overwrite(out, inputs, settings.input)  # before any scoring
    if cam is not None:
        _refuse_overlays_dir(out)
    log.info("scoring %d image(s) from %s with %s (%s, threshold %.4g%s)", len(inputs.paths), settings.input,
             detector.source, detector.kind, threshold, _origin(rule))  # fmt: skip
    rows, dataset = _rows_and_dataset(inputs, settings, detector)

    started = time.perf_counter()
    preds = _score(detector, dataset, settings, cfg.train)
    images_per_second = len(dataset) / (time.perf_counter() - started)
    probs = p_fake_per_item(len(dataset), preds, rule.temperature)
    damaged = damaged_reasons(dataset, preds.damaged) if preds is not None else {}

    frame = prediction_table(rows, probs, threshold, damaged, faces=bool(settings.face_crop), labelled=inputs.labelled)
    _refuse_all_damaged(frame, inputs, settings)  # before predictions.csv or its metrics are replaced
    write_predictions(frame, out)
    for path, reason in frame.loc[frame["damaged"].notna(), ["path", "damaged"]].itertuples(index=False):
        log.warning("damaged image, not scored: %s (%s)", path, reason)
    metrics = None
    if inputs.labelled and preds is not None:
        coverage = _coverage(rows, dataset, preds, len(inputs.paths), faces=bool(settings.face_crop))
        metrics = _write_metrics(cfg, summary, preds, rule, detector, out, coverage)
    else:  # the metrics of the predictions just replaced would now describe other scores
        metrics_file(out).unlink(missing_ok=True)
    overlays = None
    if cam is not None:
        scored = [row for row, p_fake in zip(rows, frame["p_fake"]) if not np.isnan(p_fake)]
        overlays = _explain(cam, detector, dataset, scored, probs, threshold, overlays_dir(out))
    else:  # nor may the overlays of the predictions just replaced stay, as if they explained these
        remove_overlays(overlays_dir(out))
    log.info("%d row(s) in %s; %.1f images/s", len(frame), out, images_per_second)
    print_predict_summary(frame, inputs, out, threshold=threshold, top_k=top_k, images_per_second=images_per_second,
                          metrics=metrics, overlays=overlays)  # fmt: skip
    return metrics["auc"] if metrics else None


def _cam_settings(cfg: DictConfig, detector) -> dict:
    """predict.cam's settings from conf/cam, each checked (the method and layer by building the very
    explainer the overlays use, on this model), and the device the overlays are computed on."""
    if detector.kind == "onnx":
        raise ConfigError("predict.cam=true needs the PyTorch checkpoint (.pth), not an ONNX file")
    from deepfake.explain.cam import check_explainer  # grad-cam only when asked

    cam = {
        "method": cfg.cam.method,
        "target_layer": cfg.cam.target_layer,
        "batch_size": values.positive_int(cfg.cam.batch_size, "cam.batch_size"),
        "max_side": None
        if cfg.predict.cam_max_side is None
        else values.positive_int(cfg.predict.cam_max_side, "predict.cam_max_side"),
    }
    check_explainer(detector.model, cam["method"], cam["target_layer"], detector.preprocess["img_size"])
    return cam | {"device": cfg.train.device}


def _decision_rule(detector, settings: DictConfig):
    """The model's own operating point, unless predict.threshold (eval.threshold by default) is given; a
    model stopped before choosing one gets no silent 0.5: task=test refuses it the same way. A last.pth,
    or an export of one, never holds one however its run ended (the run's is in best.pth): what the
    refusal says of it, not "resume that run"."""
    latest = None
    if detector.checkpoint.get("kind") == "last":
        source = detector.checkpoint.get("source_path") or "a last.pth"
        latest = f"an export of {source}" if detector.kind == "onnx" else "a last.pth"
    rule = detector.operating_point.rule
    return rule(settings.threshold, "predict.threshold", str(detector.source), latest_epoch=latest)


def _summary_settings(cfg: DictConfig):
    """eval.*'s settings of a labelled input's metrics, checked before scoring."""
    # Imported here: scikit-learn (with SciPy, ~1.4 s) is needed only for labelled input, and an
    # unlabelled predict should not wait for it at start-up.
    from deepfake.tasks.scoring import summary_settings

    return summary_settings(cfg)


def _rows_and_dataset(inputs, settings: DictConfig, detector):
    """The rows of predictions.csv and the dataset they are scored from: one item per image, or with
    face cropping one per face found; transformed as the checkpoint's own preprocessing says, the very
    transform task=test builds."""
    transform = data_setup.eval_transform(detector.preprocess)
    fallback = int(detector.preprocess["img_size"])
    if settings.face_crop:
        return _find_faces(inputs, settings, transform, fallback)
    dataset = ImageFileDataset(inputs.paths, transform, inputs.targets, fallback_size=fallback)
    return item_rows(dataset), dataset


def _refuse_all_damaged(frame, inputs, settings: DictConfig) -> None:
    """Some damaged files are normal in a user's folder; none readable is a mistake (most often a CSV
    read under the wrong predict.root_dir): it wrote a predictions.csv without a score and, with
    labels, the metrics of black stand-ins (AUC 0.5), and exited 0."""
    if frame.empty or not frame["damaged"].notna().all():
        return
    listed = list_for_message(
        [f"{path} ({reason})" for path, reason in frame[["path", "damaged"]].itertuples(index=False)]
    )
    if inputs.source == "csv":
        fix = ("point predict.root_dir at the folder its relative paths start from (they were read under "
               f"{inputs.root_dir})")  # fmt: skip
    else:
        fix = "repair the files or give other images"
    raise DataError(f"predict.input={settings.input}: none of its {len(inputs.paths)} image(s) can be read: "
                    f"{listed}; {fix}")  # fmt: skip


def _output_file(output) -> Path:
    """predictions.csv's path: ``predict.output`` is a file, or a folder to hold predictions.csv: one
    that exists, ends in a separator or has no suffix (made when missing); unset: the run dir."""
    if not output:
        return session.run_dir() / "predictions.csv"
    out = Path(output).expanduser()
    if out.is_dir() or str(output).endswith(("/", os.sep)) or not out.suffix:
        return make_folder(out, f"predict.output={output}") / "predictions.csv"
    return out


def _refuse_overwrite(out: Path, inputs, spec) -> None:
    """predictions.csv replaces only an earlier predictions file, and never one in another run's dir:
    the input CSV, an input image and a training run's own predictions.csv were overwritten silently."""
    where = out.parent.resolve()
    if (where / ".hydra").is_dir() and where != session.run_dir().resolve():
        raise ConfigError(f"predict.output={out} is inside another run's dir ({where}); give a path outside it")
    inputs_given = {Path(os.path.abspath(path)) for path in (*inputs.paths, str(spec))}
    if out.exists() and (Path(os.path.abspath(out)) in inputs_given or not _is_predictions_file(out)):
        raise ConfigError(f"predict.output={out} exists and is not an earlier predictions file (an input, or "
                          "another file); give another path")  # fmt: skip
    metrics = metrics_file(out)
    if metrics.exists() and (Path(os.path.abspath(metrics)) in inputs_given or not _is_predict_metrics(metrics)):
        raise ConfigError(f"predict.output={out}: {metrics}, where its metrics go, exists and is not an earlier "
                          "predict's metrics file; give another path")  # fmt: skip


def _refuse_overlays_dir(out: Path) -> None:
    """Where predict.cam's overlays go must be a folder of earlier overlays: a file of that name (or a
    dangling link) failed with a traceback after predictions.csv had been replaced."""
    where = overlays_dir(out)
    if os.path.lexists(where) and not where.is_dir():
        raise ConfigError(f"predict.output={out}: {where}, where its overlays go, exists and is not a folder; "
                          "move it or give another predict.output")  # fmt: skip
    if foreign := foreign_overlays(where):
        raise ConfigError(f"predict.output={out}: {where}, where its overlays go, holds {len(foreign)} file(s) "
                          f"named as overlays ({foreign[0].name}, ...) that no predict wrote; "
                          "give another predict.output")  # fmt: skip


def _is_predict_metrics(path: Path) -> bool:
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(written, dict) and {"checkpoint", "input", "evaluated_at"} <= written.keys()


def _is_predictions_file(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().strip().split(",")[: len(COLUMNS)] == COLUMNS
    except (OSError, UnicodeDecodeError):
        return False


def _origin(rule) -> str:
    """Where the threshold came from: predict.threshold, or the policy that chose the stored one."""
    source = (
        f" from {rule.source}" if rule.source != "checkpoint" else (f", policy {rule.policy}" if rule.policy else "")
    )
    return source + (f", temperature {rule.temperature:g}" if rule.temperature != 1.0 else "")


def _find_faces(inputs, settings: DictConfig, transform, fallback: int):
    from deepfake.inference.faces import FaceSearch, plan_face_rows  # scikit-image only when asked

    margin = values.number(settings.face_margin, "predict.face_margin")
    search = FaceSearch(inputs.paths, instantiate(settings.face_detector), margin, fallback)
    workers = resolve_num_workers(settings.num_workers, torch.device("cpu"), key="predict.num_workers")
    loader = DataLoader(search, batch_size=None, num_workers=workers, worker_init_fn=init_worker)
    with progress_bars() as progress:
        bar = progress.add_task("faces", total=len(search), status="")
        found = []
        for result in loader:
            found.append(result)
            progress.update(bar, advance=1, status=f"{sum(len(r['boxes']) for r in found)} face(s)")
    rows, crops = plan_face_rows(found, inputs, transform, fallback)
    log.info("%d face(s) in %d image(s)", len(crops), len(inputs.paths))
    return rows, crops


def _score(detector, dataset, settings: DictConfig, train: DictConfig):
    """engine.evaluate.predict over ``dataset`` with a progress bar; None when there is nothing to score.
    An ONNX session runs on the CPU: its inputs stay there."""
    if len(dataset) == 0:
        return None
    device = torch.device("cpu") if detector.kind == "onnx" else resolve_device(train.device)
    loader = data_setup.make_loader(dataset, settings, device=device, group="predict")
    with progress_bars() as progress:
        bar = progress.add_task("predict", total=len(loader), status="")
        preds = predict(detector.model.to(device), loader, device, resolve_precision(train.precision, device),
                        on_batch=lambda: progress.update(bar, advance=1))  # fmt: skip
    return preds.refuse_non_finite(str(detector.source))


def _coverage(rows: list[Row], dataset, preds, n_images: int, *, faces: bool) -> dict:
    """What the labelled metrics are over. Per image, damaged files are in them as their black
    stand-ins, as task=test counts them. Per face, an image damaged before the face search or without
    a face has no face to score and is in no figure: the metrics said n_damaged 0 of such a run."""
    if not faces:
        return {"scored_over": "images", "n_damaged": len(preds.damaged)}
    unscored = [row for row in rows if row.item is None]
    before_search = sum(row.damaged is not None for row in unscored)
    while_scoring = {dataset.paths[index] for index in preds.damaged}  # in the metrics as black stand-ins
    return {
        "scored_over": "faces", "n_images": n_images, "n_images_with_faces": n_images - len(unscored),
        "n_damaged": before_search + len(while_scoring), "n_without_face": len(unscored) - before_search,
    }  # fmt: skip


def _write_metrics(cfg: DictConfig, summary, preds, rule, detector, out: Path, coverage: dict) -> dict:
    """task=test's report of a labelled input (intervals, TPR at fixed FPRs, calibration, the decision
    rule), per image damaged stand-ins included as task=test counts them, so the same images give the
    same figures; ``coverage`` says what it is over."""
    from deepfake.evaluation.summary import summarise  # scikit-learn only for labelled input

    metrics = {
        **summarise(preds.targets, preds.logits, rule, summary),
        "decision_rule": rule.as_dict(),
        "threshold_source": rule.source,
        "threshold_policy": rule.policy,
        "temperature": rule.temperature,
        **coverage,
        "checkpoint": str(detector.source),
        "input": str(cfg.predict.input),
        "predictions": str(out),
        "evaluated_at": session.now_iso(),
    }
    atomic_write_text(metrics_file(out), json.dumps(metrics, indent=2))
    log.info("labelled input: auc=%s accuracy=%.4f (%s)", metrics["auc"], metrics["accuracy"], metrics_file(out))
    return metrics


def overlays_dir(out: Path) -> Path:
    """Where the CAM overlays of predictions file ``out`` go: cam/ beside a predictions.csv, ``<name>.cam/``
    beside any other name, so that replacing one output's overlays leaves another's alone."""
    return out.with_name("cam" if out.name == "predictions.csv" else f"{out.stem}.cam")


def metrics_file(out: Path) -> Path:
    """Where the metrics of predictions file ``out`` go: metrics_predict.json beside a predictions.csv,
    ``<name>.metrics.json`` beside any other name, so two outputs in one folder keep their own."""
    return out.with_name("metrics_predict.json" if out.name == "predictions.csv" else f"{out.stem}.metrics.json")


def _explain(cam: dict, detector, dataset, scored: list[Row], probs, threshold: float, cam_dir: Path) -> Path:
    """An overlay per scored row (damaged files and photos without a face have no score to explain)."""
    from deepfake.inference.explain import OverlayItem, safe_stem, write_overlays  # grad-cam only when asked

    items = [
        OverlayItem(row.item, safe_stem(Path(row.path).stem + ("" if row.face is None else f"_face{row.face}")),
                    None if np.isnan(row.target) else ("fake" if row.target == 1 else "real"))
        for row in scored
    ]  # fmt: skip
    model = detector.model.to(resolve_device(cam["device"]))
    write_overlays(model, dataset, items, probs, threshold, cam_dir, method=cam["method"],
                   target_layer=cam["target_layer"], batch_size=cam["batch_size"], max_side=cam["max_side"])  # fmt: skip
    log.info("CAM overlays of %d image(s): %s", len(items), cam_dir)
    return cam_dir
