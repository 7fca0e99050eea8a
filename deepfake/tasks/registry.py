"""task=registry: the finished runs as a table, best validation AUC first."""

from __future__ import annotations

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from deepfake.tasks import builders


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def run(cfg: DictConfig) -> None:
    registry = builders.open_registry(cfg)
    runs = registry.runs()
    best = registry.best_run()
    console = Console(soft_wrap=True)
    if not runs:
        console.print(f"no runs registered yet in {cfg.paths.registry}; train one with `python scripts/main.py`")
        return
    table = Table(title=f"{len(runs)} run(s) in {cfg.paths.registry}", title_justify="left")
    for column in ("", "run", "backbone", "dataset", "val AUC", "epoch", "test AUC", "test acc", "status", "ended"):
        table.add_column(column)
    for entry in runs[: int(cfg.task.limit)]:
        test = entry.get("test_metrics") or {}
        table.add_row(
            "★" if best and entry["run_name"] == best["run_name"] else "",
            entry["run_name"],
            str(entry.get("backbone")),
            str(entry.get("dataset")),
            _fmt(entry.get("best_val_auc")),
            _fmt(entry.get("best_epoch")),
            _fmt(test.get("auc")),
            _fmt(test.get("accuracy")),
            str(entry.get("status")),
            str(entry.get("ended_at")),
        )
    console.print(table)
    if best:
        console.print(f"global best: {best['run_name']} -> {cfg.paths.best_model}")
