"""task=prune: delete the ``last.pth`` of finished runs that no retention rule keeps, and stale temps.

A dry run unless ``prune.apply=true``: the table shows every registered run that still has a
``last.pth``, its size, and why it goes or stays (the rules: :mod:`deepfake.tracking.retention`),
then the temps that killed writers left in run dirs (registered or not) and in the models dir, and
the bytes freed.
``best.pth``, the registry and every other file stay: ``best.pth`` is the run's model.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig
from rich.table import Table
from rich.text import Text

from deepfake.tasks import session, values
from deepfake.tasks.run_states import number_setting, run_states
from deepfake.tracking.checkpoint import stale_temps
from deepfake.tracking.console import summary_console
from deepfake.tracking.retention import PruneDecision, plan_prune

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    keep_days = number_setting(cfg.prune.keep_days, "prune.keep_days", (int, float))
    keep_last = number_setting(cfg.prune.keep_last, "prune.keep_last", int)
    apply = values.flag(cfg.prune.apply, "prune.apply")
    registry = session.open_registry(cfg)
    states = run_states(registry.runs(), stale_after_s=values.lock_stale_after_s(cfg))
    best = registry.best_run()
    decisions = plan_prune(
        states, best_run=best and best["run_name"], now=datetime.now(timezone.utc), keep_days=keep_days,
        keep_last=keep_last,
    )  # fmt: skip
    folders = _temp_folders(cfg, {state.run_name: state.run_dir for state in states})
    temps = {f"{label}/{temp.name}": temp for label, folder in folders.items() for temp in stale_temps(folder)}
    _print_plan(decisions, temps, registry_path=cfg.paths.registry)
    doomed = [decision for decision in decisions if decision.prune]
    freed = sum(decision.run.last_bytes for decision in doomed) + sum(map(_size, temps.values()))
    what = f"{len(doomed)} last.pth and {len(temps)} temp file(s): {_mib(freed)} ({freed} bytes)"
    if not apply:
        summary_console().print(f"dry run: would delete {what}; prune.apply=true deletes them")
        return
    for path in [decision.run.run_dir / "last.pth" for decision in doomed] + list(temps.values()):
        path.unlink(missing_ok=True)
        log.info("deleted %s", path)  # run.log keeps what went
    summary_console().print(f"deleted {what}")


def _temp_folders(cfg: DictConfig, registered: dict[str, Path]) -> dict[str, Path]:
    """Where killed writers leave temps, by the name the table shows (a full path would crowd out the
    reasons): the registered runs' dirs, every run dir under outputs/train and multirun/ (a run killed
    before it registered leaves its temps too), and the models dir."""
    folders = dict(registered)
    seen = {folder.resolve() for folder in folders.values()}
    for root, pattern in ((Path(cfg.paths.log_dir) / "train", "*"), (Path(cfg.paths.multirun_dir), "*/*")):
        for folder in sorted(root.glob(pattern)):
            if folder.is_dir() and folder.resolve() not in seen:
                folders[folder.relative_to(root).as_posix()] = folder
                seen.add(folder.resolve())
    return folders | {"models": Path(cfg.paths.models_dir)}


def _print_plan(decisions: list[PruneDecision], temps: dict[str, Path], *, registry_path: str) -> None:
    table = Table(title=f"{len(decisions)} registered run(s) with a last.pth ({registry_path})", title_justify="left")
    for column in ("run", "last.pth", "", "why"):
        table.add_column(column)
    for decision in decisions:
        table.add_row(
            decision.run.run_name, _mib(decision.run.last_bytes), Text("prune", style="red") if decision.prune else "keep",
            decision.reason,
        )  # fmt: skip
    for label, temp in temps.items():
        table.add_row(label, _mib(_size(temp)), Text("prune", style="red"), "a temp left by a killed writer")
    summary_console().print(table)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0  # its writer's process removed it meanwhile


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
