"""task=card: write model_card.md beside a checkpoint; task=train writes one for every run's best.pth
and carries it along when the registry promotes that checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from deepfake.reports.card_facts import collect_facts
from deepfake.reports.model_card import write_model_card
from deepfake.tasks import checkpoints, session
from deepfake.tracking.checkpoint import load_checkpoint_and_sha256

log = logging.getLogger(__name__)


def write_card(checkpoint_path: Path, cfg: DictConfig, entry: dict | None = None) -> Path:
    """The card of ``checkpoint_path``; ``entry`` is its registry entry (looked up when not given)."""
    checkpoint, sha256 = load_checkpoint_and_sha256(checkpoint_path)
    if entry is None and checkpoint.get("run_name"):
        entry = session.open_registry(cfg).get(checkpoint["run_name"])
    facts = collect_facts(Path(checkpoint_path), checkpoint, entry, Path(cfg.paths.best_model), sha256=sha256)
    path = write_model_card(facts)
    log.info("model card: %s", path)
    return path


def run(cfg: DictConfig) -> None:
    write_card(checkpoints.resolve_checkpoint(cfg.get("ckpt"), cfg, what="ckpt"), cfg)
