"""The promotion set from the config, and checkpoints scored on it (task=train, task=registry).

Every candidate for the global best is judged on ``registry.promotion_csv``: by default the dataset's
full validation CSV (for ``dataset=batch``, the source CSV the batches were cut from, not the batch's
slice). It is never the test CSV: a model chosen on test data has no honest test figure left.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from deepfake.errors import CheckpointError, ConfigError, DataError
from deepfake.tasks import values
from deepfake.tracking.promotion import describe, set_identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionSet:
    csv: Path
    root_dir: Path
    identity: dict[str, Any]

    @property
    def key(self) -> str:
        return self.identity["key"]

    def __str__(self) -> str:
        return describe(self.identity)


def promotion_set(cfg: DictConfig, candidates: Sequence[dict] = ()) -> PromotionSet:
    """``registry.promotion_csv`` read and identified; refused when it is the test set of this config
    or of one of the ``candidates`` (registry entries)."""
    csv, root = Path(str(cfg.registry.promotion_csv)), Path(str(cfg.registry.promotion_root_dir))
    _refuse_a_candidates_test_set(csv, candidates)
    chosen = _identity(cfg, csv, root)
    test_csv = Path(str(cfg.dataset.test_csv))
    same_file = test_csv.is_file() and test_csv.resolve() == csv.resolve()
    if same_file or (test_csv.is_file() and _identity(cfg, test_csv, Path(str(cfg.dataset.root_dir)))["images_sha256"]
                     == chosen["images_sha256"]):  # fmt: skip
        raise ConfigError(
            f"registry.promotion_csv={csv} holds the test images ({test_csv}); the global best must be chosen "
            "on validation images: point registry.promotion_csv at a validation CSV"
        )
    _check_images(cfg, csv, root)
    return PromotionSet(csv, root, chosen)


def _refuse_a_candidates_test_set(csv: Path, candidates: Sequence[dict]) -> None:
    """The test CSV each candidate's figures were measured on, by path or by the CSV's bytes (a copy
    elsewhere): task=registry is often run without the training's dataset overrides, so the check
    against this config's dataset.test_csv alone missed it and the best was chosen on test images."""
    from deepfake.data.manifest import file_sha256  # Pillow: task=registry lists without it

    digest = file_sha256(csv) if csv.is_file() else None
    for entry in candidates:
        test = entry.get("test_metrics") or {}
        same_path = bool(test.get("test_csv")) and Path(test["test_csv"]).resolve() == csv.resolve()
        if same_path or (digest is not None and test.get("test_csv_sha256") == digest):
            raise ConfigError(
                f"registry.promotion_csv={csv} is the test CSV of run {entry['run_name']} ({test.get('test_csv')}); "
                "the global best must be chosen on validation images: point registry.promotion_csv at a "
                "validation CSV"
            )


def _check_images(cfg: DictConfig, csv: Path, root: Path) -> None:
    """Every promotion image decoded once, as training checks its own (answered from the scan memo
    when unchanged): a CSV whose paths miss registry.promotion_root_dir scored black images, and
    promoted whichever model liked black best."""
    from deepfake.engine.launcher_env import env_rank
    from deepfake.tasks.preflight import check_images  # torch: task=registry lists without it

    if not cfg.dataset.scan_images or env_rank() != 0:  # as training's own scan: once, by rank 0, when asked
        return
    dataset = instantiate(cfg.dataset.reader)(csv_path=str(csv), root_dir=str(root))
    max_bad_fraction = values.non_negative(cfg.dataset.max_bad_fraction, "dataset.max_bad_fraction")
    try:
        check_images(dataset, "promotion", max_bad_fraction, Path(str(cfg.dataset.cache_dir)) / "scans")
    except DataError as err:
        raise DataError(f"promotion set: {err} (its paths are read under registry.promotion_root_dir={root})") from None


def split_identity(cfg: DictConfig, dataset) -> dict[str, Any]:
    """The identity of a split already read (the run's validation set), to see if it is the promotion set."""
    return set_identity(dataset.csv_path, Path(str(cfg.dataset.root_dir)), dataset.paths, dataset.targets,
                        _contents(cfg, dataset.paths))  # fmt: skip


def score_checkpoint(path: Path, cfg: DictConfig, chosen: PromotionSet) -> float | None:
    """AUC of the checkpoint on the promotion set, with the checkpoint's own preprocessing."""
    # Imported here: task=registry lists the registry without paying for torch unless it re-scores.
    from deepfake.engine.evaluate import predict
    from deepfake.engine.metrics import auc_or_none
    from deepfake.engine.precision import resolve_device, resolve_precision
    from deepfake.models import detector_from_checkpoint
    from deepfake.tasks import data_setup
    from deepfake.tracking.checkpoint import load_checkpoint

    model = detector_from_checkpoint(load_checkpoint(path))
    device = resolve_device(cfg.train.device)
    transform = data_setup.eval_transform(model.preprocess, normalise=False)
    dataset = instantiate(cfg.dataset.reader)(
        csv_path=str(chosen.csv), root_dir=str(chosen.root_dir), transform=transform
    )
    loader = data_setup.make_loader(dataset, cfg.dataset, device=device)
    predictions = predict(model.to(device), loader, device, resolve_precision(cfg.train.precision, device),
                          to_input=data_setup.model_input(model.preprocess, device))  # fmt: skip
    return auc_or_none(predictions.targets, predictions.logits)


def rescorer(cfg: DictConfig, chosen: PromotionSet) -> Callable[[Path], float | None]:
    """``score_checkpoint`` for the registry: a checkpoint that cannot be read is reported, scored None."""

    def rescore(path: Path) -> float | None:
        log.info("scoring %s on the promotion set %s", path, chosen)
        try:
            return score_checkpoint(path, cfg, chosen)
        except (CheckpointError, DataError) as err:
            log.error("cannot score %s on %s: %s; it is skipped, not replaced", path, chosen, err)
            return None

    return rescore


def candidate_promotion(
    cfg: DictConfig, best_path: Path, best_val_auc: float | None, chosen: PromotionSet
) -> dict[str, Any]:
    """The run's own promotion score: ``best_val_auc`` when best.pth's weights were validated on the
    promotion set itself (the same images and labels: best.pth records which set, ``validated_on``),
    else a pass of best.pth over the promotion set. A run resumed at another dataset.img_size validated
    on other images than the best.pth it stopped with, whose AUC was registered as the new set's."""
    from deepfake.tracking.checkpoint import load_checkpoint

    validated_on = load_checkpoint(best_path, mmap=True).get("validated_on")
    if validated_on is not None and validated_on == chosen.identity["images_sha256"]:
        auc = best_val_auc
    else:
        auc = score_checkpoint(best_path, cfg, chosen)
        log.info("promotion score of best.pth on %s: %s (its own validation: %s)", chosen, auc, best_val_auc)
    return {"auc": auc, "set": chosen.identity}


def _identity(cfg: DictConfig, csv: Path, root: Path) -> dict[str, Any]:
    dataset = instantiate(cfg.dataset.reader)(csv_path=str(csv), root_dir=str(root), transform=None)
    return set_identity(csv, root, dataset.paths, dataset.targets, _contents(cfg, dataset.paths))


def _contents(cfg: DictConfig, paths) -> list[str]:
    """Each image's sha256, hashed once and remembered in dataset.cache_dir/sha256/ while the files keep
    their sizes and times."""
    from deepfake.data.manifest import image_sha256s_remembered  # Pillow: task=registry lists without it

    return image_sha256s_remembered(paths, Path(str(cfg.dataset.cache_dir)) / "sha256")
