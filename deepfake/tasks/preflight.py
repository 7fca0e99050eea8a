"""Checks that run before the first training step, so a mistake costs seconds, not an epoch.

Everything the run writes at its end is tried first (the registry, the models dir, room for the
checkpoints); then the input size is tried on the model itself, the images are decoded once, and the
image tree is compared with its manifest when asked. Each failure is a one-line UserError naming the
key or files.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from deepfake.data.manifest import verify_manifest
from deepfake.data.scan import list_for_message
from deepfake.errors import ConfigError, DataError
from deepfake.tasks.values import non_negative
from deepfake.tracking.registry import Registry

log = logging.getLogger(__name__)

# torch.save's zip records and alignment on top of the tensors' bytes: 2-3 % for a network of small tensors.
CHECKPOINT_OVERHEAD = 1.05
# The state of an optimizer the probe cannot step on the CPU is taken to be AdamW's: its two moments.
ADAMW_STATE_PER_WEIGHT = 2.0


def check_registry(registry: Registry, run_name: str, run_dir: Path) -> None:
    """The registry is readable, valid and writable, the models dir writable, and ``run_name`` not
    another run dir's: otherwise the run would learn it after its compute."""
    registry.check_writable()
    registry.check_name_free(run_name, run_dir)


def check_checkpoint_space(run_dir: Path, model: torch.nn.Module, make_optimizer, *, ema: bool) -> None:
    """``run_dir`` has room for the checkpoints at their peak (:func:`checkpoint_peak_bytes`); those a
    resumed run already holds count as room of their own."""
    held = sum(path.stat().st_size for path in (run_dir / "best.pth", run_dir / "last.pth") if path.is_file())
    needed = checkpoint_peak_bytes(model, make_optimizer, ema=ema) - held
    check_free_space(run_dir, needed, "best.pth, last.pth and the last.pth written to replace it")


def checkpoint_peak_bytes(model: torch.nn.Module, make_optimizer, *, ema: bool) -> int:
    """The disk a run's checkpoints take at their peak: best.pth (the weights) and last.pth (the weights,
    the moving average with ``ema``, the optimizer state ``make_optimizer`` keeps while a phase goes on)
    on disk, while last.pth's replacement is written beside it (the old file stays until the new one is
    whole). Fine-tuning trains every parameter; the files' own bookkeeping adds a few percent."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in model.parameters())
    last = weights * (2 if ema else 1) + trained * optimizer_state_per_weight(make_optimizer)
    return round(CHECKPOINT_OVERHEAD * (weights + 2 * last))


def optimizer_state_per_weight(make_optimizer) -> float:
    """The bytes of optimizer state per byte of trained weights (AdamW's two moments: 2; SGD with
    momentum: 1), measured on one parameter after one step: the state appears only once it steps."""
    probe = torch.zeros(64, requires_grad=True)
    try:
        optimizer = make_optimizer([{"params": [probe]}])
        probe.grad = torch.zeros_like(probe)
        optimizer.step()
    except Exception:  # noqa: BLE001 - one that steps only on the GPU (capturable=true): its own step says so
        return ADAMW_STATE_PER_WEIGHT
    state = optimizer.state_dict()["state"].get(0, {}).values()
    held = sum(t.numel() * t.element_size() for t in state if torch.is_tensor(t) and t.numel() > 1)
    return held / (probe.numel() * probe.element_size())


def check_free_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ConfigError(
            f"{folder} has {free / 2**20:.1f} MiB free, but {what} need {needed / 2**20:.1f} MiB; free some "
            "disk space or point paths.log_dir (paths.multirun_dir for sweeps) at a larger disk"
        )


def check_input_size(model: torch.nn.Module, img_size: int, backbone: str) -> None:
    """One zero image through the model: fixed-size ViTs and deep stride stacks refuse some sizes."""
    was_training = model.training
    model.eval()
    try:
        reason = _forward_error(model, img_size)
        if reason is None:
            return
        native = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[-1]
        if native != img_size and _forward_error(model, native) is not None:
            # It fails at its own size too: a backbone setting is wrong, not the image size.
            raise ConfigError(f"backbone {backbone} cannot score an image even at its own size {native} ({reason}); "
                              "check the backbone.* settings")  # fmt: skip
        raise ConfigError(f"dataset.img_size={img_size} does not fit backbone {backbone} ({reason}); pick a size "
                          "it accepts")  # fmt: skip
    finally:
        model.train(was_training)


def _forward_error(model: torch.nn.Module, size: int) -> str | None:
    """Why one zero image of ``size`` cannot go through ``model``, or None."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except (AssertionError, RuntimeError, ValueError, TypeError) as err:
        return " ".join(str(err).split()) or type(err).__name__
    return None


def check_images(dataset, split: str, max_bad_fraction: float, memo_dir: str | os.PathLike | None = None) -> int:
    """Decode every image of ``dataset`` once; abort when more than ``max_bad_fraction`` are damaged.

    Below the limit the damaged files are only reported: the loader substitutes them. Returns their count.
    A cached dataset answers from its cache, whose build decoded every image; with ``memo_dir``, files
    unchanged since an earlier session's scan answer from what it found.
    """
    started = time.perf_counter()
    damaged, remembered = dataset.find_damaged(memo_dir)
    how = "unchanged since they were checked" if remembered else "checked"
    log.info("%d %s images %s (%.1f s): %d damaged", len(dataset.paths), split, how, time.perf_counter() - started,
             len(damaged))  # fmt: skip
    if not damaged:
        return 0
    listed = list_for_message([f"{path} ({reason})" for path, reason in damaged])
    fraction = len(damaged) / len(dataset.paths)
    if fraction > max_bad_fraction:
        raise DataError(
            f"{dataset.csv_path}: {len(damaged)} of {len(dataset.paths)} images are damaged ({fraction:.1%} > "
            f"dataset.max_bad_fraction={max_bad_fraction:g}): {listed}; repair the files or raise the limit"
        )
    log.warning("%s: %d damaged image(s) will be replaced by black images: %s", dataset.csv_path, len(damaged), listed)
    return len(damaged)


def check_dataset_files(dataset_cfg: DictConfig, splits: dict) -> None:
    """The manifest (when ``dataset.verify_manifest``) and the damaged-image scan of ``splits``."""
    if dataset_cfg.get("verify_manifest"):
        started = time.perf_counter()
        count = verify_manifest(dataset_cfg.root_dir, dataset_cfg.manifest)
        log.info("%d images match %s (%.1f s)", count, dataset_cfg.manifest, time.perf_counter() - started)
    scan_splits(dataset_cfg, splits)


def scan_splits(dataset_cfg: DictConfig, splits: dict, root_key: str = "dataset.root_dir") -> None:
    """The damaged-image scan of ``splits`` (name -> dataset), unless ``dataset.scan_images=false``. A
    refusal names the root the paths were read under (``root_key``): a wrong root is the usual cause."""
    if not dataset_cfg.scan_images:
        return
    limit = non_negative(dataset_cfg.max_bad_fraction, "dataset.max_bad_fraction")
    for split, dataset in splits.items():
        try:
            check_images(dataset, split, limit, Path(dataset_cfg.cache_dir) / "scans")
        except DataError as err:
            raise DataError(f"{err} (its paths are read under {root_key}={dataset.root_dir})") from None


# Why each split needs both classes, and the setting that names its CSV.
_BOTH_CLASSES = {
    "train": ("a detector trained on one class learns nothing", "dataset.train_csv"),
    "validation": ("no threshold can be chosen on it", "dataset.val_csv"),
}


def check_both_classes(dataset, csv_path, split: str) -> None:
    """Training and validation need real and fake images (the operating point and AUC are chosen on
    validation after training): a one-class CSV is refused before the first batch, not after the last."""
    if len(np.unique(np.asarray(dataset.targets))) < 2:
        why, key = _BOTH_CLASSES[split]
        raise DataError(f"{csv_path}: {split} holds one class only; {why}. Give {key} real and fake images")
