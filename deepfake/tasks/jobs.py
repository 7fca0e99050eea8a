"""One task run as a job: its outcome recorded where the sweep and the entry point can find it.

Hydra runs the task function once per job: in this process (the basic launcher), in joblib worker
processes, or on a cluster node through submitit. A job that fails must not end the sweep, so a job
never exits the process: a user's mistake is logged as its one line and a bug with its traceback,
both into the job's own run.log; a failed training job of a sweep is registered as failed (never
promoted);
the outcome goes to the run dir's ``status.json``, from which the sweep summary reads every job
wherever it ran; and the launcher gets a :class:`FailedJob` back, which Optuna's sweeper records as
a failed trial. The entry point (scripts/main.py) alone turns outcomes into the exit status.

A job refused before its first write (a mistyped ``run_lock.*``, a dir another live process writes,
a dir holding another job's run) leaves ``status.json`` alone: it is the dir's run's, perhaps a live
writer's. Its outcome goes to a record kept under the name of the launch (``LAUNCH_ENV``), which
that launch's summary alone reads.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from deepfake.engine.launcher_env import env_rank, env_world_size
from deepfake.errors import ConfigError, RunDirLocked, RunStopped, TrainingError, UserError, find_in_chain
from deepfake.tasks import relaunch, values
from deepfake.tracking.checkpoint import atomic_write_text

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
# Names one launch of a sweep (set by its summary callback before any job starts; inherited by joblib
# workers and submitit jobs): a status.json says which launch wrote it, and a refused job's record is
# kept under it, so two launches into one fixed hydra.sweep.dir each summarise their own jobs.
LAUNCH_ENV = "DEEPFAKE_SWEEP_LAUNCH"
EXIT_USER_ERROR = 2  # the user's to fix: one line said what
EXIT_BUG = 1  # a traceback in run.log

# Exit statuses of the jobs that ran in this process, and of the sweep as the summary read it from
# disk (jobs of other processes included); the entry point exits with the worst.
_job_exit_codes: list[int] = []
_sweep_exit_code = 0


@dataclass(frozen=True)
class FailedJob:
    """What a failed job returns to its launcher instead of its metric.

    Not a number, so Optuna's sweeper records the trial as failed, counts it against
    ``max_failure_rate`` and logs the error line; the basic and joblib launchers just keep it.
    """

    error: str
    exit_code: int

    def __float__(self) -> float:
        raise ValueError(f"the job failed: {self.error}")

    def __str__(self) -> str:
        return f"failed ({self.error})"


def worst_exit_code(codes) -> int:
    """The status a run of several jobs exits with: 1 when any hit a bug (a traceback must not hide
    behind another job's user error, 2), else the highest (2, or a stop signal's 130/143/140); 0 for none."""
    codes = [int(code) for code in codes]
    return EXIT_BUG if EXIT_BUG in codes else max(codes, default=0)


def exit_status() -> int:
    """0 when every job of this process and of the last sweep succeeded, else the worst code."""
    return worst_exit_code([*_job_exit_codes, _sweep_exit_code])


def stop_exit_status(stop: BaseException) -> int:
    """The shell's status for a process that ``stop`` ended: 128 + the signal's number (Ctrl-C: SIGINT's,
    130); anything else that leaves a task this way is a bug."""
    if isinstance(stop, RunStopped):
        return 128 + stop.signum
    if isinstance(stop, KeyboardInterrupt):  # Ctrl-C's, or a StopSignal's (SIGTERM outside training)
        return 128 + getattr(stop, "signum", signal.SIGINT)
    return EXIT_BUG


def record_job_exit(code: int) -> None:
    """A job's outcome decided outside run_job (a sweeper's trial whose config cannot be composed)."""
    _job_exit_codes.append(int(code))


def record_sweep_exit(code: int) -> None:
    global _sweep_exit_code
    _sweep_exit_code = worst_exit_code([_sweep_exit_code, code])


def run_job(cfg: DictConfig, task: Callable[[DictConfig], Any]) -> Any:
    """Run ``task(cfg)`` in the job's run dir; return its metric, or a :class:`FailedJob`.

    Under torchrun or a multi-task SLURM job, training runs on every rank (rank 0 alone records and
    registers); any other task runs on rank 0 alone, as one process would.
    """
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if env_world_size() > 1:
        if cfg.task.name != "train":
            if env_rank() != 0:
                log.info("task=%s runs on rank 0 alone; rank %d has nothing to do", cfg.task.name, env_rank())
                return None
        else:
            from deepfake.engine import distributed  # torch: only for a distributed training job

            distributed.init_from_env()
    try:
        with _writer_lock(cfg, out_dir):
            return _run_held(cfg, task, out_dir)
    except RunStopped:
        if env_world_size() > 1 and cfg.task.name == "train":
            # Every rank stopped after the same batch. torchrun ends the whole job at the first rank that
            # exits with an error, killing rank 0 in its last writes (status.json, the trackers, the lock,
            # the curves): the others wait here for rank 0 to have made them.
            from deepfake.engine import distributed

            distributed.shut_down()
        raise
    except RunDirLocked as held:  # the message names the holder
        return _refused(cfg, out_dir, str(held), "refused")
    except ConfigError as mistyped:  # run_lock.*: the lock was never tried
        return _refused(cfg, out_dir, str(mistyped), "failed")


def _refused(cfg: DictConfig, out_dir: Path, line: str, state: str) -> FailedJob:
    """A job refused before its first write: a failed result of this launch (its summary lists it,
    ``state`` "refused" when the dir is another run's), never written over the dir's status.json.
    A training job that failed on a setting is registered as failed, as any failed sweep job is,
    unless the dir already holds a run (an earlier launch's, or a live writer's whose lock went
    untried): its registry entry is that run's."""
    log.error("%s", line)
    _job_exit_codes.append(EXIT_USER_ERROR)
    if HydraConfig.get().mode == RunMode.MULTIRUN and env_rank() == 0:
        if state == "failed" and cfg.task.name == "train" and read_status(out_dir) is None:
            _register_failure(cfg, out_dir, line)
        _record_refusal(cfg, out_dir, state, line)
    return FailedJob(line, EXIT_USER_ERROR)


def _record_refusal(cfg: DictConfig, out_dir: Path, state: str, line: str) -> None:
    launch = os.environ.get(LAUNCH_ENV)
    if not launch:  # no summary callback to read it (hydra.callbacks changed): the log line is all
        return
    hydra = HydraConfig.get()
    record = {"status": state, "task": cfg.task.name, "job_num": hydra.job.num, "launch": launch,
              "overrides": list(hydra.overrides.task), "ended_at": now_iso(), "error": line,
              "exit_code": EXIT_USER_ERROR}  # fmt: skip
    atomic_write_text(refusal_path(out_dir, launch), json.dumps(record, indent=2) + "\n")


def refusal_path(run_dir: Path, launch: str) -> Path:
    """Where a job refused in ``run_dir`` by the launch ``launch`` is recorded: a name of its own, so
    that the dir's run (perhaps a live writer's) keeps its status.json."""
    return run_dir / f".refused-{launch}.json"


def _writer_lock(cfg: DictConfig, out_dir: Path):
    """Training holds its run dir's lock from before its first write (status.json); read-only tasks
    never take it and never wait for it. Under torchrun rank 0 holds it for the job (its ranks share it)."""
    if cfg.task.name != "train" or env_rank() != 0:
        return nullcontext()
    from deepfake.tracking.run_lock import RunDirLock

    stale_after_s = values.lock_stale_after_s(cfg)
    wait_s = values.non_negative(cfg.run_lock.wait_s, "run_lock.wait_s")
    if os.environ.get("SUBMITIT_EXECUTOR"):
        # A requeued cluster job can start while its predecessor is still exiting, or on another node
        # before the killed predecessor's heartbeat has aged: it waits for the lock to end or go stale.
        wait_s = max(wait_s, stale_after_s)
    return RunDirLock(out_dir, stale_after_s=stale_after_s, wait_s=wait_s)


def _run_held(cfg: DictConfig, task: Callable[[DictConfig], Any], out_dir: Path) -> Any:
    started = time.perf_counter()
    previous = read_status(out_dir) or {}  # an earlier attempt's or launch's
    status = _starting_status(cfg.task.name, previous)
    if env_world_size() > 1 and cfg.task.name == "train":
        # Rank 0's view: the other ranks must not read the status.json it writes next. Other tasks run
        # on rank 0 alone (run_job let the others go), so there is no one to broadcast to.
        from deepfake.engine import distributed

        status, previous = distributed.broadcast_object((status, previous))
    if relaunch.another_jobs_dir(out_dir, status, previous):
        line = (f"{out_dir} holds a job of an earlier launch with other overrides ({' '.join(previous['overrides'])}); "
                "relaunch this sweep into another hydra.sweep.dir")  # fmt: skip
        return _refused(cfg, out_dir, line, "refused")
    if relaunch.earlier_launch(cfg, out_dir, status, previous) == "finished":
        return _finished_earlier(out_dir, previous, status)
    if status["attempt"] > 1 and cfg.task.name == "train" and not cfg.get("resume"):
        # The launcher started this same job again (a SLURM requeue after pre-emption or a time-out):
        # it continues in its own run dir from the last.pth its previous attempt saved.
        log.info(
            "attempt %d of launcher job %s: resuming from %s", status["attempt"], status["launcher_job_id"], out_dir
        )
        cfg.resume = str(out_dir)
    last_before = _file_identity(out_dir / "last.pth")
    begun = False
    try:
        # Inside: a stop signal landing once status.json is written, before the task begins, must
        # still leave it saying "stopped". A status.json that cannot be written is no failed job.
        write_status(out_dir, status)
        begun = True
        value = task(cfg)
    except Exception as err:  # noqa: BLE001 - every failure of a job is recorded, then the sweep goes on
        if not begun:
            raise
        kept = previous if _resume_left_run_as_it_was(cfg, out_dir, previous, last_before, err) else None
        return _failed(cfg, out_dir, status, err, time.perf_counter() - started, kept=kept)
    except BaseException as stop:  # a stop signal or Ctrl-C: not a result, it ends the process
        write_status(out_dir, {**status, "status": "stopped", "error": type(stop).__name__, "ended_at": now_iso(),
                               "exit_code": stop_exit_status(stop)})  # fmt: skip
        raise
    _job_exit_codes.append(0)
    write_status(out_dir, {**status, **_ended(started), "status": "finished", "value": _number_or_none(value)})
    return value


def _finished_earlier(out_dir: Path, previous: dict, status: dict) -> Any:
    log.info("%s finished in an earlier launch of this sweep (value %s): not trained again", out_dir,
             previous.get("value"))  # fmt: skip
    _job_exit_codes.append(0)
    # The job's number, overrides, start and launch are this launch's, so that its summary lists the
    # job as it launched it (a run finished by hand has no number and a resume= override); the rest
    # is the run's.
    job = {key: status[key] for key in ("job_num", "overrides", "started_at", "launch")}
    write_status(out_dir, {**previous, **job, "note": "finished in an earlier launch"})
    return previous.get("value")


def _file_identity(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _resume_left_run_as_it_was(cfg: DictConfig, out_dir: Path, previous: dict, last_before: tuple | None,
                               err: Exception) -> bool:  # fmt: skip
    """Whether a single run's resume was refused before it trained or saved anything (another backbone,
    a changed setting): the run is still as its status.json said, stopped or killed, and resumable from
    the same last.pth, which a \"failed\" status would deny. A training that failed (registered so) and
    a sweep job's failure (its launch's result) are recorded as failed."""
    if not cfg.get("resume") or previous.get("task") != "train" or HydraConfig.get().mode == RunMode.MULTIRUN:
        return False
    if find_in_chain(err, lambda e: isinstance(e, TrainingError)) is not None:
        return False
    return last_before is not None and _file_identity(out_dir / "last.pth") == last_before


def _failed(cfg: DictConfig, out_dir: Path, status: dict, err: Exception, seconds: float, *,
            kept: dict | None = None) -> FailedJob:  # fmt: skip
    """Record a failed job; ``kept``: the run's status.json to keep, this attempt's failure noted in it."""
    user_error = find_in_chain(err, lambda e: isinstance(e, UserError))
    if user_error is not None:
        line, code = str(user_error), EXIT_USER_ERROR
        log.error("%s", line)
    else:
        line, code = f"{type(err).__name__}: {err}".splitlines()[0], EXIT_BUG
        log.exception("the job failed with a bug (traceback below; please report it): %s", line)
    if cfg.task.name == "train" and HydraConfig.get().mode == RunMode.MULTIRUN and env_rank() == 0:
        # In a sweep a failed job is a result to list beside the others; a single run's user sees
        # the line at once, and a run that never started has nothing to register.
        _register_failure(cfg, out_dir, line)
    _job_exit_codes.append(code)
    ended = {"ended_at": now_iso(), "seconds": round(seconds, 3)}
    if kept is not None:
        write_status(out_dir, {**kept, "resume_failed": {**ended, "error": line, "exit_code": code}})
    else:
        write_status(out_dir, {**status, **ended, "status": "failed", "error": line, "exit_code": code})
    return FailedJob(line, code)


def _register_failure(cfg: DictConfig, out_dir: Path, line: str) -> None:
    """A failed training job is a result: in the registry with its error, never promoted."""
    try:
        # Imported here: the registry's module pulls torch in, which task=registry need not pay for.
        from deepfake.tasks.session import run_labels
        from deepfake.tracking.registry import Registry

        registry = Registry(Path(cfg.paths.registry), Path(cfg.paths.best_model), float(cfg.registry.lock_timeout_s))
        registry.record_failure(
            {
                "run_name": job_run_name(out_dir),
                **run_labels(cfg),
                "run_dir": str(out_dir),
                "backbone": cfg.backbone.get("name"),
                "dataset": cfg.dataset.get("name"),
                "overrides": list(HydraConfig.get().overrides.task),
                "best_val_auc": None,
                "ended_at": now_iso(),
            },
            error=line,
        )
    except Exception as err:  # noqa: BLE001 - the failure is already logged; a broken registry must not hide it
        log.warning("could not register the failed run in %s: %s", cfg.paths.registry, err)


def job_run_name(out_dir: Path) -> str:
    """The run dir's name; a sweep job's is ``<sweep dir>/<job dir>``, so sweep jobs stay apart. Told by
    the path too (Hydra's multirun.yaml beside the job dirs): a job resumed by hand runs outside any
    sweep, and must keep its one registry entry under the same name."""
    if HydraConfig.get().mode == RunMode.MULTIRUN or (out_dir.parent / "multirun.yaml").is_file():
        return f"{out_dir.parent.name}/{out_dir.name}"
    return out_dir.name


def read_status(run_dir: Path) -> dict | None:
    return read_record(run_dir / STATUS_FILE)


def read_record(path: Path) -> dict | None:
    """A status.json or a refusal record; None when missing or unreadable."""
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def write_status(run_dir: Path, status: dict) -> None:
    """``status.json``; under torchrun rank 0's alone."""
    if env_rank() != 0:
        return
    atomic_write_text(run_dir / STATUS_FILE, json.dumps(status, indent=2) + "\n")


def _starting_status(task_name: str, previous: dict) -> dict:
    """This attempt's status.json; ``previous`` (the run dir's last one) tells a requeued attempt."""
    hydra = HydraConfig.get()
    launcher_job_id = _launcher_job_id()
    same_job = launcher_job_id is not None and previous.get("launcher_job_id") == launcher_job_id
    return {
        "status": "running",
        "task": task_name,
        "job_num": hydra.job.num if hydra.mode == RunMode.MULTIRUN else None,
        "overrides": list(hydra.overrides.task),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "launcher_job_id": launcher_job_id,
        "launch": os.environ.get(LAUNCH_ENV),
        "attempt": int(previous.get("attempt", 1)) + 1 if same_job else 1,
        "started_at": now_iso(),
        "ended_at": None,
        "seconds": None,
        "value": None,
        "error": None,
        "exit_code": None,
    }


def _launcher_job_id() -> str | None:
    """The cluster job id when submitit runs this process; it survives a requeue."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    import submitit

    return str(submitit.JobEnvironment().job_id)


def _ended(started: float) -> dict:
    return {"ended_at": now_iso(), "seconds": round(time.perf_counter() - started, 3), "exit_code": 0}


def _number_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
