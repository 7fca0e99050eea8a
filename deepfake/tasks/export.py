"""task=export: a checkpoint -> model.onnx + model.json, refused unless onnxruntime reproduces it.

ckpt (run dir | .pth | the global best) -> the graph (normalisation, network, temperature, sigmoid)
-> onnxruntime against PyTorch at batch 1 and 8 on random and real images -> model.onnx beside the
checkpoint (or export.output) and its sidecar.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from deepfake.errors import ConfigError
from deepfake.inference import discover_inputs, load_detector
from deepfake.inference.onnx_export import (
    export_onnx,
    is_own_onnx,
    is_own_sidecar,
    onnx_modules,
    sidecar_path,
    verification_images,
)
from deepfake.reports.model_card import output_beside
from deepfake.tasks import checkpoints, values

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    settings = cfg.export
    source = checkpoints.resolve_checkpoint(cfg.get("ckpt"), cfg, what="ckpt")
    if source.suffix.lower() == ".onnx":
        raise ConfigError(f"ckpt={source} is already an ONNX file; export a run dir or a .pth checkpoint")
    output = Path(settings.output) if settings.output else default_output(source, Path(cfg.paths.best_model))
    if output.suffix.lower() != ".onnx":
        raise ConfigError(f"export.output={settings.output} must end in .onnx (its sidecar takes the same name, .json)")
    tolerance = values.number(settings.tolerance, "export.tolerance")
    if not tolerance > 0:
        raise ConfigError(f"export.tolerance={settings.tolerance} must be a positive difference in p(fake)")
    count = values.positive_int(settings.verify_images, "export.verify_images")
    opset = None if settings.opset is None else values.positive_int(settings.opset, "export.opset")
    _refuse_overwrite(output, settings.output)
    detector = load_detector(source)
    if detector.operating_point.threshold is None:
        # A last.pth never holds one, however its run ended; any other checkpoint without one stopped early.
        why = ("is a last.pth, which holds no decision threshold (its run's is in best.pth beside it: export that "
               "with ckpt=<run dir>)" if detector.checkpoint.get("kind") == "last"
               else "holds no decision threshold (its training stopped before choosing one)")  # fmt: skip
        log.warning("%s %s: %s's threshold is null, and task=predict on the export needs predict.threshold=<p_fake>",
                    source, why, sidecar_path(output).name)  # fmt: skip
    # Labels play no part in the check: a CSV's label column, whatever it holds, is not read.
    given = settings.verify_input
    paths = (
        discover_inputs(
            given,
            key="export.verify_input",
            label_column=None,
            root_dir=settings.root_dir,
            path_column=settings.path_column,
        ).paths
        if given
        else None
    )
    images = verification_images(paths, detector.preprocess, count)
    log.info("exporting %s (%s, %d px) to %s; checking on %d %s image(s)", source, detector.name,
             detector.preprocess["img_size"], output, len(images), "given" if paths else "synthetic")  # fmt: skip
    verification = export_onnx(detector, output, images, tolerance=tolerance, opset=opset)
    log.info("onnxruntime vs PyTorch, max |p_fake difference|: %s (tolerance %g)",
             ", ".join(f"{k} {v:.2e}" for k, v in verification.differences.items()), tolerance)  # fmt: skip
    log.info("wrote %s and %s; score with: python scripts/main.py task=predict ckpt=%s predict.input=<images>",
             output, sidecar_path(output), output)  # fmt: skip
    return verification.max_difference


def _refuse_overwrite(output: Path, given) -> None:
    """The graph and its sidecar replace only an earlier export's: export.output=user.onnx overwrote the
    user's own user.json silently. Checked before anything is loaded or written."""
    onnx_modules()  # reading an existing .onnx needs onnx: its one line, not an ImportError
    sidecar = sidecar_path(output)
    for path, ours, what in ((output, is_own_onnx, "an earlier export's graph"),
                             (sidecar, is_own_sidecar, "an earlier export's sidecar")):  # fmt: skip
        if path.is_dir():  # as atomic_path says it, but before the graph is written rather than after
            raise ConfigError(f"cannot write {path}: a folder of that name is there; give a file name")
        if path.exists() and not ours(path):
            named = "" if path == output else f": {path}, where its sidecar goes,"
            raise ConfigError(f"export.output={given or output}{named} exists and is not {what}; give another path")


def default_output(checkpoint: Path, best_model: Path | None = None) -> Path:
    """``model.onnx`` beside a best.pth or the registry's ``best_model``, ``<stem>.model.onnx`` beside any
    other checkpoint (``last.model.onnx``), named as its model card: the exports of two checkpoints in one
    folder (a run's last.pth beside its best.pth, two copies) replaced each other."""
    return output_beside(checkpoint, "model.onnx", best_model)
