"""A promotion never leaves the former best's default ONNX export (model.onnx) beside the new
best_model.pth (deepfake.tracking.registry with deepfake.inference.onnx_export's sidecars)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from deepfake.inference.onnx_export import SIDECAR_FORMAT
from deepfake.tracking.registry import Registry


def _registry(root: Path) -> Registry:
    return Registry(root / "models" / "model_metadata.json", root / "models" / "best_model.pth", 10.0)


def _checkpoint(root: Path, name: str) -> Path:
    path = root / "runs" / name / "best.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"weights of {name}".encode() * 100)
    return path


def _register(registry: Registry, root: Path, name: str, auc: float) -> bool:
    return registry.register_run({"run_name": name, "best_val_auc": auc}, _checkpoint(root, name))


def _export(onnx: Path, source: Path) -> None:
    """An export's graph and sidecar as task=export writes them, of ``source`` as it is now."""
    onnx.write_bytes(b"graph of " + source.read_bytes()[:20])
    recorded = {"path": str(source), "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    sidecar = {"format": SIDECAR_FORMAT, "onnx_file": onnx.name, "onnx_sha256": "0" * 64, "source_checkpoint": recorded}
    onnx.with_suffix(".json").write_text(json.dumps(sidecar))


def test_a_promotion_removes_the_former_bests_default_export_and_nothing_else(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    assert _register(registry, tmp_path, "a", 0.8)
    models = registry.best_model_path.parent
    _export(models / "model.onnx", registry.best_model_path)
    _export(models / "mine.onnx", registry.best_model_path)  # export.output named by the user: theirs to keep
    _export(models / "other.onnx", _checkpoint(tmp_path, "other"))  # of another checkpoint: not ours to judge
    (models / "notes.json").write_text('{"format": "mine"}')

    assert not _register(registry, tmp_path, "worse", 0.7)
    assert {"model.onnx", "model.json", "mine.onnx", "mine.json"} <= {path.name for path in models.iterdir()}

    assert _register(registry, tmp_path, "better", 0.9)
    assert sorted(path.name for path in models.iterdir() if path.suffix in (".onnx", ".json")) == [
        "mine.json", "mine.onnx", "model_metadata.json", "notes.json", "other.json", "other.onnx"]  # fmt: skip


def test_an_export_of_the_same_bytes_stays_when_they_are_promoted_again(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    assert _register(registry, tmp_path, "a", 0.8)
    models = registry.best_model_path.parent
    _export(models / "model.onnx", registry.best_model_path)
    registry.promote("a", _checkpoint(tmp_path, "a"))  # task=registry's re-ranking chose the same model
    assert (models / "model.onnx").is_file() and (models / "model.json").is_file()
