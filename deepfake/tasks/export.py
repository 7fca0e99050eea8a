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
from deepfake.inference.onnx_export import export_onnx, sidecar_path, verification_images
from deepfake.tasks import checkpoints, values

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    settings = cfg.export
    source = checkpoints.resolve_checkpoint(cfg.get("ckpt"), cfg, what="ckpt")
    if source.suffix.lower() == ".onnx":
        raise ConfigError(f"ckpt={source} is already an ONNX file; export a run dir or a .pth checkpoint")
    output = Path(settings.output) if settings.output else default_output(source)
    if output.suffix.lower() != ".onnx":
        raise ConfigError(f"export.output={settings.output} must end in .onnx (its sidecar takes the same name, .json)")
    tolerance = values.number(settings.tolerance, "export.tolerance")
    if not tolerance > 0:
        raise ConfigError(f"export.tolerance={settings.tolerance} must be a positive difference in p(fake)")
    count = values.positive_int(settings.verify_images, "export.verify_images")
    opset = None if settings.opset is None else values.positive_int(settings.opset, "export.opset")
    detector = load_detector(source)
    if detector.operating_point.threshold is None:
        log.warning(
            "%s holds no decision threshold (its training stopped before choosing one): model.json's "
            "threshold is null, and task=predict on the export needs predict.threshold=<p_fake>",
            source,
        )
    # Labels play no part in the check: a CSV's label column, whatever it holds, is not read.
    given = settings.verify_input
    paths = (
        discover_inputs(given, key="export.verify_input", label_column=None, root_dir=settings.root_dir).paths
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


def default_output(checkpoint: Path) -> Path:
    """``model.onnx`` beside the checkpoint, except for a run's last.pth (``last.model.onnx``), as its
    model card: an export of the latest epoch must not replace the export of the best model beside it."""
    return checkpoint.parent / ("last.model.onnx" if checkpoint.name == "last.pth" else "model.onnx")
