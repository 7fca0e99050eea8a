"""task=archive: pack chosen run dirs into one verified archive; the registry keeps their entries.

The runs are ``archive.runs`` (names or dirs) and/or the finished runs older than
``archive.older_than_days``. Their run dirs are locked for the whole task, exactly as a training
run locks its own (:mod:`deepfake.tracking.run_lock`): a named run that a live process is writing
is refused with one line (one chosen by age is skipped), and no resume can start in a run dir while
it is being packed or removed. The
archive is written under a temp name, read back and compared with its sources, then renamed
(:mod:`deepfake.tracking.archive`); only then are the entries marked ``archived`` (the archive's
path, when, whether the run dir was removed) and, with ``archive.remove=true``, the run dirs
deleted. An entry keeps its ``status``: it still says how the run ended, and task=resume, rescore
and compare read it.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig
from rich.table import Table

from deepfake.errors import ConfigError
from deepfake.tasks import session, values
from deepfake.tasks.run_states import number_setting, run_states
from deepfake.tracking.archive import SUFFIXES, available_formats, write_archive
from deepfake.tracking.console import summary_console
from deepfake.tracking.registry import Registry
from deepfake.tracking.retention import age_days
from deepfake.tracking.run_lock import LOCK_NAME, RunDirLock

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    fmt = str(cfg.archive.format)
    if fmt not in SUFFIXES:
        raise ConfigError(f"archive.format={fmt} is unknown; choose one of: {', '.join(SUFFIXES)}")
    if fmt not in available_formats():
        raise ConfigError(f"archive.format={fmt} needs the zstandard package: pip install zstandard, or use "
                          "archive.format=gz")  # fmt: skip
    remove = values.flag(cfg.archive.remove, "archive.remove")
    values.flag(cfg.archive.allow_best, "archive.allow_best")
    archive_dir = _archive_dir(cfg.archive.dir)
    registry = session.open_registry(cfg)
    chosen = _chosen(cfg, registry)
    if not chosen:
        summary_console().print(f"nothing to archive: no finished run in {cfg.paths.registry} that ended more than "
                                f"archive.older_than_days={cfg.archive.older_than_days} days ago is left to archive "
                                "(the global best's, locked runs and runs archived already are kept)")  # fmt: skip
        return
    _refuse_dir_inside_runs(archive_dir, chosen)
    path = archive_dir / f"runs_{session.run_name()}{SUFFIXES[fmt]}"
    stale_after_s = values.lock_stale_after_s(cfg)
    with ExitStack() as locks:
        for entry in chosen:
            locks.enter_context(RunDirLock(entry["run_dir"], stale_after_s=stale_after_s))
        # Sweep jobs are named <sweep>/<job>: the same path inside the archive as under multirun/.
        packed = write_archive(path, {entry["run_name"]: Path(entry["run_dir"]) for entry in chosen}, fmt)
        archived = {
            "path": str(path.resolve()), "archived_at": session.now_iso(), "run_dir_removed": remove,
        }  # fmt: skip
        for entry in chosen:
            registry.update_run(entry["run_name"], archived=archived)
            if remove:
                _empty_but_lock(Path(entry["run_dir"]))
    if remove:
        for entry in chosen:  # only the lock was left, and releasing it removed it
            _remove_empty(Path(entry["run_dir"]))
    _print_archived(chosen, packed, path, removed=remove)


def _archive_dir(value) -> Path:
    """``archive.dir`` as a folder; null or empty refused: ``Path("")`` is the working directory, where
    the only copy of a removed run would have landed unnoticed."""
    if value is None or not str(value).strip():
        raise ConfigError(f"archive.dir={'null' if value is None else value} names no folder; give the folder to "
                          "write the archive in, or leave archive.dir out for paths.root_dir/archive")  # fmt: skip
    return Path(str(value))


def _chosen(cfg: DictConfig, registry: Registry) -> list[dict]:
    """The entries to archive, in the order named, then the old ones; the best only when allowed."""
    named = session.text_list(cfg.archive.runs)
    older_than = number_setting(cfg.archive.older_than_days, "archive.older_than_days", (int, float))
    if not named and older_than is None:
        raise ConfigError("nothing chosen to archive; name runs with archive.runs=[<run name or dir>,...] "
                          "or set archive.older_than_days=N")  # fmt: skip
    best = registry.best_run()
    best_name = best["run_name"] if best else None
    chosen = {}
    for name in map(str, named):
        entry = registry.get(name) or registry.entry_for_run_dir(name)
        if entry is None:
            raise ConfigError(f"archive.runs: {name} is neither a registered run name nor a registered run dir; "
                              "task=registry lists them")  # fmt: skip
        if not Path(entry.get("run_dir") or "").is_dir():
            raise ConfigError(f"archive.runs: the run dir of {entry['run_name']} ({entry.get('run_dir')}) is gone"
                              + _where_archived(entry))  # fmt: skip
        if entry["run_name"] == best_name and not cfg.archive.allow_best:
            raise ConfigError(f"archive.runs: {best_name} is the global best's run; its metrics and report "
                              "would leave the run dir: add archive.allow_best=true to archive it anyway")  # fmt: skip
        chosen[entry["run_name"]] = entry
    if older_than is not None:
        now = datetime.now(timezone.utc)
        entries = {entry["run_name"]: entry for entry in registry.runs()}
        for state in run_states(list(entries.values()), stale_after_s=values.lock_stale_after_s(cfg)):
            old = state.status == "finished" and state.last_active and age_days(state.last_active, now) > older_than
            # Archived already (its dir kept, archive.remove=false): a weekly archive packed it again each week.
            if not old or state.run_name in chosen or entries[state.run_name].get("archived"):
                continue
            if state.run_name == best_name and not cfg.archive.allow_best:
                log.info("kept %s: the global best's run (archive.allow_best=true archives it too)", best_name)
                continue
            if state.locked:  # chosen by age, not by name: a weekly archive goes on without it
                log.info("kept %s: a live process holds its run.lock", state.run_name)
                continue
            chosen[state.run_name] = entries[state.run_name]
    return list(chosen.values())


def _refuse_dir_inside_runs(archive_dir: Path, chosen: list[dict]) -> None:
    """Refused even without archive.remove: a later archive of that run would pack this archive too."""
    where = archive_dir.resolve()
    for entry in chosen:
        run_dir = Path(entry["run_dir"]).resolve()
        if where == run_dir or run_dir in where.parents:
            raise ConfigError(f"archive.dir={archive_dir} is inside the run dir of {entry['run_name']} ({run_dir}), "
                              "where archive.remove=true would delete the archive and that run's next archive "
                              "would pack it; choose an archive.dir outside the run dirs being archived")  # fmt: skip


def _where_archived(entry: dict) -> str:
    archived = entry.get("archived")
    return f"; it was archived to {archived['path']}" if archived else "; task=registry lists the runs still on disk"


def _empty_but_lock(run_dir: Path) -> None:
    """Delete what the run dir holds, except the lock that keeps a resume out until we are done."""
    for child in run_dir.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _remove_empty(run_dir: Path) -> None:
    try:
        run_dir.rmdir()
    except OSError as error:  # a new run started there between our lock's release and now
        log.warning("left %s: %s", run_dir, error)


def _print_archived(chosen: list[dict], packed: dict, path: Path, *, removed: bool) -> None:
    table = Table(title=f"{len(chosen)} run(s) archived to {path} ({path.stat().st_size} bytes)", title_justify="left")
    for column in ("run", "files", "bytes", "run dir"):
        table.add_column(column)
    for entry in chosen:
        members = [value for name, value in packed.items() if name.startswith(entry["run_name"] + "/")]
        files = [value for value in members if value[0] == "file"]
        table.add_row(entry["run_name"], str(len(files)), str(sum(value[1] for value in files)),
                      f"{entry['run_dir']} (removed)" if removed else entry["run_dir"])  # fmt: skip
    console = summary_console()
    console.print(table)
    console.print("registry entries marked archived (task=registry still lists them)"
                  + ("" if removed else "; archive.remove=true would also delete the run dirs"))  # fmt: skip
