"""Which checkpoint a task means (``best``, a run dir, a file) and loading weights into a fresh model."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from deepfake.errors import CheckpointError
from deepfake.tracking.checkpoint import load_checkpoint_and_sha256


def resolve_checkpoint(spec: str | None, cfg: DictConfig, *, what: str) -> Path:
    """``best`` or None -> the global best; a run dir -> its best.pth; a file -> itself. Absolute: it is
    recorded (metrics_test.json, the model card, model.json) and read from other working directories."""
    if spec in (None, "best"):
        path = Path(cfg.paths.best_model).absolute()
        if not path.is_file():
            raise CheckpointError(f"{what}: there is no global best model yet ({path}); train first or pass a path")
        return path
    path = Path(str(spec)).expanduser().absolute()
    if path.is_dir():
        path = path / "best.pth"
    if not path.is_file():
        raise CheckpointError(f"{what}={spec}: no such checkpoint ({path}); pass a run dir or a .pth file")
    return path


def load_weights_into(model: torch.nn.Module, path: Path) -> tuple[dict, str]:
    """``init_from``: copy a checkpoint's weights into a freshly built model of the same backbone; returns
    the checkpoint and the sha256 of the bytes read (a promotion may replace best_model.pth just after)."""
    checkpoint, sha256 = load_checkpoint_and_sha256(path)
    check_backbone(checkpoint, model, f"init_from={path}")
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"init_from={path}: its weights do not fit this {model.detector_spec['name']} "
            f"({str(err).splitlines()[0]}); build the backbone with the same settings"
        ) from err
    return checkpoint, sha256


def check_backbone(checkpoint: dict, model: torch.nn.Module, what: str) -> None:
    """A checkpoint's weights only fit the backbone they were trained with."""
    trained_with = (checkpoint.get("model_spec") or {}).get("name")
    if trained_with != model.detector_spec["name"]:
        raise CheckpointError(
            f"{what} was trained with backbone {trained_with!r}, not {model.detector_spec['name']!r}; "
            f"pass backbone=... to match, or another checkpoint"
        )
