"""task=registry: the registered runs as a table, best validation AUC first (optionally one sweep's)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from deepfake.errors import ConfigError
from deepfake.tasks import builders
from deepfake.tasks.display import print_registry


def run(cfg: DictConfig) -> None:
    registry = builders.open_registry(cfg)
    runs = registry.runs()
    title = None
    if cfg.task.get("sweep"):
        runs = runs_of_sweep(runs, str(cfg.task.sweep), Path(cfg.paths.multirun_dir))
        title = f"sweep {cfg.task.sweep}"
    print_registry(
        runs,
        registry.best_run(),
        registry_path=cfg.paths.registry,
        best_model_path=cfg.paths.best_model,
        limit=int(cfg.task.limit),
        title=title,
    )


def runs_of_sweep(runs: list[dict], sweep: str, multirun_dir: Path) -> list[dict]:
    """The entries whose run dir lies in the sweep dir ``sweep``: a path, or a name under multirun_dir."""
    sweep_dir = Path(sweep).expanduser()
    if not sweep_dir.is_dir():
        sweep_dir = multirun_dir / sweep
    if not sweep_dir.is_dir():
        raise ConfigError(f"task.sweep={sweep}: no such sweep dir (looked in {multirun_dir}); pass multirun/<stamp>")
    sweep_dir = sweep_dir.resolve()
    return [run for run in runs if sweep_dir in Path(run.get("run_dir", "")).resolve().parents]
