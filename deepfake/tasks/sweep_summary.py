"""Hydra callbacks for sweeps: the summary of every job when a sweep ends; a continued Optuna study.

Jobs may have run in this process, in joblib workers or on cluster nodes, so the summary is read
from disk: each job dir's ``status.json`` (written by :mod:`deepfake.tasks.jobs`) joined with the
job's registry entry (best validation AUC, its epoch, test AUC). A job dir without a finished status
(a job killed by SIGKILL or the out-of-memory killer) counts as failed, and so does a job its launcher
saw taken down before it started, which has no dir: the launcher tells this process of it. A job
refused before its first write (a mistyped setting, a dir another live process writes) is failed
with its line, read from the record this launch's jobs keep apart from the dir's status.json.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.table import Table

from deepfake.tasks.display import fmt_metric
from deepfake.tasks.jobs import (
    EXIT_BUG,
    EXIT_USER_ERROR,
    LAUNCH_ENV,
    read_record,
    read_status,
    record_sweep_exit,
    refusal_path,
    worst_exit_code,
)
from deepfake.tracking.checkpoint import atomic_write_text
from deepfake.tracking.console import summary_console

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.csv"
COLUMNS = ["job", "overrides", "status", "best_val_auc", "best_epoch", "test_auc", "seconds", "run_dir", "error"]

# The jobs of the sweep under way that never started, as this process's launcher or sweeper saw them.
_unstarted: list[dict] = []


def record_unstarted_job(num: int, overrides: list[str], error: str, *, composed: bool = True) -> None:
    """A job with no dir for the summary to read: its worker died before it began (killed), or its
    config could not be composed (``composed=False``: failed, the user's to fix)."""
    status, code = ("running", EXIT_BUG) if composed else ("failed", EXIT_USER_ERROR)
    _unstarted.append({"job_num": num, "overrides": list(overrides), "status": status, "error": error,
                       "exit_code": code})  # fmt: skip


class SweepSummary(Callback):
    """``on_multirun_end``: ``summary.csv`` in the sweep dir, a rich table, and the sweep's exit status."""

    def __init__(self) -> None:
        self.launched: float | None = None
        self.launch: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.launched = time.time()
        # Unique to this launch, wherever its jobs run (the environment reaches joblib's workers and
        # submitit's jobs): a second launch into the same dir at the same time is told apart.
        self.launch = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        os.environ[LAUNCH_ENV] = self.launch
        _unstarted.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = summarize(
            sweep_dir, _registry_entries(config), since=self.launched, unstarted=_unstarted, launch=self.launch
        )
        if self.launch:  # read: the summary now holds what they said
            for record in sweep_dir.rglob(refusal_path(Path(), self.launch).name):
                record.unlink(missing_ok=True)
        if not rows:
            return
        path = write_summary(sweep_dir, rows)
        print_summary(rows, path, sweep_dir)
        record_sweep_exit(worst_exit_code(row["exit_code"] for row in rows))


class OptunaStudy(Callback):
    """Prepares an Optuna search before the sweeper opens its study: sqlite cannot create the storage's
    folder, so it is made here. (The sampler's seed, per launch, is the sweeper's: SeededPerLaunch.)"""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The preset's sweeper (which ends a search of failing trials), made known to Hydra by hand: an
        # editable install hides it from Hydra's scan of the hydra_plugins namespace.
        from hydra.core.plugins import Plugins

        from hydra_plugins.deepfake_optuna.optuna_search import OptunaSearch

        Plugins.instance().register(OptunaSearch)
        storage = str(config.hydra.sweeper.get("storage") or "")
        if storage.startswith("sqlite:///"):
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def summarize(
    sweep_dir: Path,
    entries: list[dict],
    since: float | None = None,
    unstarted: list[dict] = (),
    launch: str | None = None,
) -> list[dict]:
    """One row per job dir under ``sweep_dir``, and per job of ``unstarted`` (statuses of jobs killed
    before they made a dir): best validation AUC first, failed jobs last. ``launch`` (its name, as its
    jobs recorded it) and ``since`` (its start, a Unix time): only the jobs this launch ran, when a
    fixed ``hydra.sweep.dir`` also holds another launch's, and this launch's refused jobs."""
    by_run_dir = {str(Path(entry.get("run_dir", "")).resolve()): entry for entry in entries}
    job_dirs = sorted({hydra_dir.parent for hydra_dir in sweep_dir.rglob(".hydra") if hydra_dir.is_dir()})
    # A refused job's dir holds another run (a live writer's, an earlier launch's): its record is
    # this launch's word on the job, and the run's registry entry is not the job's.
    refused = {d: record for d in job_dirs if launch and (record := read_record(refusal_path(d, launch)))}
    statuses = {d: read_status(d) or _hydra_job(d) for d in job_dirs if d not in refused}
    statuses = {d: status for d, status in statuses.items() if _this_launch(d, status, since, launch)}
    rows = [_row(job_dir, status, by_run_dir.get(str(job_dir.resolve()), {})) for job_dir, status in statuses.items()]
    rows += [_row(job_dir, record, {}) for job_dir, record in refused.items()]
    with_dirs = {row["job"] for row in rows}  # a job killed just after Hydra made its dir is there already
    rows += [_row(None, status, {}) for status in unstarted if status["job_num"] not in with_dirs]
    _keep_varying_overrides(rows)
    return sorted(rows, key=_rank)


# status.json's started_at is cut to the second; a job started within a second of the launch must count.
_CLOCK_SLACK_S = 1.0


def _this_launch(job_dir: Path, status: dict, since: float | None, launch: str | None) -> bool:
    """Whether this launch ran the job in ``job_dir``: its status.json names the launch that wrote it
    (another launch may be writing it now); one that names none (written before launches were named,
    or by resume= outside any sweep) counts when it started after the launch did."""
    if launch and status.get("launch"):
        return status["launch"] == launch
    return since is None or _started(job_dir, status) >= since - _CLOCK_SLACK_S


def _started(job_dir: Path, status: dict) -> float:
    """When the job in ``job_dir`` last started: its status.json's started_at, else (a job killed
    before writing one) when Hydra wrote its .hydra/."""
    started = status.get("started_at")
    try:
        return datetime.fromisoformat(str(started)).timestamp()
    except ValueError:
        return (job_dir / ".hydra").stat().st_mtime


def _hydra_job(job_dir: Path) -> dict:
    """The number and overrides of a job killed before it wrote its status.json, from what Hydra wrote."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        hydra = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra
        return {"job_num": hydra.job.num, "overrides": list(hydra.overrides.task)}
    except (OSError, OmegaConfBaseException, yaml.YAMLError):  # Hydra had not finished: the row names the dir
        return {}


def _row(job_dir: Path | None, status: dict, entry: dict) -> dict:
    state = status.get("status") or "no status"
    if state == "running":
        state = "killed"  # the sweep is over, so nothing is still running: it died without a word
    failed = state != "finished"
    test = entry.get("test_metrics") or {}
    return {
        "job": status.get("job_num", job_dir and job_dir.name),
        "overrides": status.get("overrides") or [],
        "status": state,
        "best_val_auc": entry.get("best_val_auc", status.get("value") if status.get("task") == "train" else None),
        "best_epoch": entry.get("best_epoch"),
        "test_auc": test.get("auc"),
        "seconds": status.get("seconds"),
        "run_dir": str(job_dir or ""),
        "error": status.get("error") or ("ended without recording an outcome (killed?)" if failed else None),
        "exit_code": int(status.get("exit_code") or (EXIT_BUG if failed else 0)),
    }


def _keep_varying_overrides(rows: list[dict]) -> None:
    """Show what tells the jobs apart: overrides shared by every job are dropped from the rows."""
    common = set.intersection(*(set(row["overrides"]) for row in rows)) if len(rows) > 1 else set()
    for row in rows:
        row["overrides"] = " ".join(o for o in row["overrides"] if o not in common)


def _rank(row: dict) -> tuple:
    auc = row["best_val_auc"]
    return (row["status"] != "finished", auc is None, -(auc or 0.0), str(row["job"]))


def write_summary(sweep_dir: Path, rows: list[dict]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = sweep_dir / SUMMARY_FILE
    atomic_write_text(path, buffer.getvalue())
    return path


def print_summary(rows: list[dict], path: Path, sweep_dir: Path) -> None:
    failed = sum(row["status"] != "finished" for row in rows)
    title = f"sweep: {len(rows)} job(s), {failed} failed — {path}"
    table = Table(title=title, title_justify="left")
    for column in ("job", "overrides", "status", "val AUC", "epoch", "test AUC", "wall s", "job dir / error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        style = None if row["status"] == "finished" else "red"
        table.add_row(
            str(row["job"]), row["overrides"], row["status"], fmt_metric(row["best_val_auc"]),
            fmt_metric(row["best_epoch"]), fmt_metric(row["test_auc"]),
            "" if row["seconds"] is None else f"{row['seconds']:.1f}",
            row["error"] or str(Path(row["run_dir"]).relative_to(sweep_dir)), style=style,
        )  # fmt: skip
    summary_console().print(table)


def _registry_entries(config: DictConfig) -> list[dict]:
    from deepfake.tracking.registry import Registry

    try:
        return Registry(config.paths.registry, config.paths.best_model).runs()
    except Exception as err:  # noqa: BLE001 - a summary without registry figures beats no summary
        log.warning("sweep summary without registry figures: %s", err)
        return []
