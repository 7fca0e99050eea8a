"""Score with an exported model.onnx through onnxruntime, behind the same interface as a checkpoint.

The session sits inside a torch module so task=predict runs it through the very loader, transform
and scoring loop (engine.evaluate.predict) that a .pth goes through: what differs between the two
is then the artefact alone, which is what a user checking a deployment wants to see.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from deepfake.data.manifest import file_sha256
from deepfake.data.transforms import interpolation_mode
from deepfake.errors import CheckpointError, ConfigError
from deepfake.evaluation.decision import OperatingPoint
from deepfake.inference.detector import Detector
from deepfake.inference.onnx_export import (
    IDENTITY_NORMALISATION,
    INPUT_NAME,
    OUTPUT_NAME,
    SIDECAR_FORMAT,
    onnx_modules,
    open_session,
    sidecar_path,
)

log = logging.getLogger(__name__)


class OnnxDetector(torch.nn.Module):
    """(B, 3, S, S) pixels in [0, 1] -> (B, 1) logits, as the checkpoint's model gives them.

    The scoring loop collects logits; handing back the graph's p(fake) as ``temperature * logit(p)``
    (the graph divided by it) keeps one loop, one rule and one calibration report for both kinds of
    model. A float32 p saturates at 1 past a logit of about 17 (and reaches 0 only past about -103):
    logit(1) = inf ended a labelled predict in scikit-learn's traceback, so 1 is clipped to just above
    the largest p below it, and 0 to the smallest p above it; every other p keeps its own logit.
    """

    # Halfway past float32's last steps below 1 (2**-24) and above 0 (2**-149): the order is kept.
    _HIGHEST, _LOWEST = 1.0 - 2.0**-25, 2.0**-150

    def __init__(self, path: Path, temperature: float) -> None:
        super().__init__()
        onnxruntime = onnx_modules()
        preferred = ("CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in preferred if p in onnxruntime.get_available_providers()]
        self.session = open_session(onnxruntime, path, providers)
        self.temperature = float(temperature)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        p_fake = self.session.run([OUTPUT_NAME], {INPUT_NAME: image.detach().cpu().float().numpy()})[0]
        p_fake = torch.from_numpy(p_fake).double().clamp(self._LOWEST, self._HIGHEST)
        logits = torch.logit(p_fake) * self.temperature
        return logits.float().reshape(-1, 1)


def read_sidecar(onnx_path: Path) -> dict:
    """model.json beside ``onnx_path``, checked to describe these very bytes."""
    path = sidecar_path(onnx_path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{onnx_path}: its sidecar {path} is missing; export again with task=export") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); export again with task=export") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise CheckpointError(f"{path} is not a deepfake ONNX sidecar (format {SIDECAR_FORMAT}); export again")
    if meta.get("onnx_sha256") != file_sha256(onnx_path):
        raise CheckpointError(f"{onnx_path} does not match its sidecar {path} (sha256 differs); export again")
    return meta


def load_onnx_detector(path: Path) -> Detector:
    if not path.is_file():
        raise CheckpointError(f"ckpt={path}: no such ONNX file; pass the model.onnx that task=export wrote")
    meta = read_sidecar(path)
    img_size, interpolation, real_label, point = _fields(meta, sidecar_path(path))
    model = OnnxDetector(path, point.temperature)
    source = meta.get("source_checkpoint") if isinstance(meta.get("source_checkpoint"), dict) else {}
    _warn_if_source_changed(path, source)
    # The sidecar's checksum covers the graph, not the sidecar: an edited img_size would reach
    # onnxruntime as a shape error on the first batch.
    height, width = model.session.get_inputs()[0].shape[2:]
    if (height, width) != (img_size, img_size) and all(isinstance(side, int) for side in (height, width)):
        raise CheckpointError(f"{sidecar_path(path)} says img_size={img_size}, but {path} takes "
                              f"{height}x{width} images; export again with task=export")  # fmt: skip
    return Detector(
        model=model,
        preprocess={"img_size": img_size, "interpolation": interpolation, **IDENTITY_NORMALISATION},
        operating_point=point,
        source=path,
        kind="onnx",
        real_label=real_label,
        checkpoint={
            "model_spec": meta.get("backbone"),
            "run_name": source.get("run_name"),
            "kind": _source_kind(source),
            "source_path": source.get("path"),
        },
    )


def _warn_if_source_changed(path: Path, source: dict) -> None:
    """A warning, not a refusal: the graph and its sidecar still agree (verified, its own threshold), and
    scoring a kept export of an earlier model (a deployed one, against the new best) is a fair wish. What
    must not happen is scoring it as the checkpoint now at that path without a word: after a resume or a
    promotion replaced it, the old model and threshold were used silently. A source that is gone (an
    export copied elsewhere) or unrecorded says nothing either way."""
    recorded, checkpoint = source.get("sha256"), Path(str(source.get("path") or ""))
    if not (isinstance(recorded, str) and source.get("path") and checkpoint.is_file()):
        return
    current = file_sha256(checkpoint)
    if current != recorded:
        log.warning("%s is an export of %s as it was (sha256 %s...), but that file has changed since (now %s...): "
                    "these are the earlier model's scores and threshold; task=export ckpt=%s exports the current one",
                    path, checkpoint, recorded[:12], current[:12], checkpoint)  # fmt: skip


def _source_kind(source: dict) -> str | None:
    """The kind of checkpoint exported ("best", "last"): recorded in the sidecar, or, in one written before
    it was, told by the checkpoint's name; a last.pth's export then gets a last.pth's advice."""
    kind = source.get("kind")
    if kind is None and Path(str(source.get("path") or "")).name == "last.pth":
        return "last"
    return kind if isinstance(kind, str) else None


def _fields(meta: dict, sidecar: Path) -> tuple[int, str, int, OperatingPoint]:
    """(img_size, interpolation, the training CSVs' real label, the operating point) from model.json, each
    checked: its checksum covers the graph, not itself, and an edited field was a KeyError or ValueError
    traceback, or a threshold outside [0, 1] used as given."""
    shown = {key: meta.get(key) for key in ("img_size", "interpolation", "labels", "threshold", "temperature")}
    refused = CheckpointError(f"{sidecar}: its fields are missing or out of range ({shown}); export again with "
                              "task=export")  # fmt: skip
    try:
        img_size, real_label = int(meta["img_size"]), int(meta["labels"]["training_csv_real_label"])
        interpolation_mode(meta["interpolation"])
        point = OperatingPoint.of(meta, str(sidecar))  # checks the threshold and temperature itself
    except (KeyError, TypeError, ValueError, ConfigError, CheckpointError):
        raise refused from None
    if not (img_size > 0 and real_label in (0, 1)):
        raise refused
    return img_size, str(meta["interpolation"]), real_label, point
