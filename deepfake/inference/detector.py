"""A trained detector ready to score: a best.pth rebuilt in PyTorch, or an exported model.onnx.

Both come out as a module that returns one logit per image, the preprocessing its inputs need (what
``build_eval_transform`` takes) and the operating point, so task=predict scores either through the
same data and scoring code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deepfake.evaluation.decision import OperatingPoint
from deepfake.models import detector_from_checkpoint
from deepfake.tracking.checkpoint import load_checkpoint_and_sha256


@dataclass
class Detector:
    model: torch.nn.Module  # images normalised by ``preprocess`` -> (B, 1) logits
    preprocess: dict  # img_size, mean, std, interpolation
    operating_point: OperatingPoint
    source: Path
    kind: str  # "pytorch" | "onnx"
    real_label: int = 1  # the training CSVs' label for real images: a labelled input's default polarity
    checkpoint: dict = field(default_factory=dict, repr=False)
    # Of the bytes the model was built from, not of the file now at ``source``: a promotion may replace it.
    source_sha256: str | None = None

    @property
    def name(self) -> str:
        spec = self.checkpoint.get("model_spec") or {}
        return str(spec.get("name", self.source.name))


def load_detector(path: str | os.PathLike) -> Detector:
    """``*.onnx`` (with its model.json sidecar) or a checkpoint written by this project."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        from deepfake.inference.onnx_runtime import load_onnx_detector  # onnxruntime only when asked

        return load_onnx_detector(path)
    checkpoint, sha256 = load_checkpoint_and_sha256(path)
    model = detector_from_checkpoint(checkpoint)
    point = OperatingPoint.of(checkpoint, str(path))
    return Detector(
        model=model,
        preprocess=model.preprocess,  # the checkpoint's own, img_size included
        operating_point=point,
        source=path,
        kind="pytorch",
        real_label=int((checkpoint.get("labels") or {}).get("real_label", 1)),
        checkpoint=checkpoint,
        source_sha256=sha256,
    )
