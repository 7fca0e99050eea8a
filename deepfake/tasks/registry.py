"""task=registry: the finished runs as a table, best validation AUC first."""

from __future__ import annotations

from omegaconf import DictConfig

from deepfake.tasks import builders
from deepfake.tasks.display import print_registry


def run(cfg: DictConfig) -> None:
    registry = builders.open_registry(cfg)
    print_registry(
        registry.runs(),
        registry.best_run(),
        registry_path=cfg.paths.registry,
        best_model_path=cfg.paths.best_model,
        limit=int(cfg.task.limit),
    )
