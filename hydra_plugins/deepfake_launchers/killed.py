"""What a launcher returns for a job that ended without a word (SIGKILL, out of memory)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus

from deepfake.tasks.jobs import EXIT_BUG, LAUNCH_ENV, STATUS_FILE, FailedJob, read_status, record_job_exit, write_status
from deepfake.tasks.sweep_summary import record_unstarted_job

log = logging.getLogger(__name__)


def killed_job(num: int, overrides: list[str], why: str, sweep_dir) -> JobReturn:
    """A failed job (a sweep goes on past it; Optuna records a failed trial) with its line, which its
    status.json gets too, for the sweep's summary. Its status stays running (the summary lists it as
    killed), so that relaunching the sweep into its dir resumes it. A job taken down before it started
    has no dir of this launch to read: the summary is told of every killed job here, and keeps the row
    of one without such a dir."""
    # An Optuna search relaunched asks its study for new trials: the killed one goes on only by resume=.
    line = (f"killed: {why}; out of memory? relaunch the sweep with hydra.sweep.dir={sweep_dir} to resume it "
            "(a trial of an Optuna search: resume=<its run dir>)")  # fmt: skip
    log.error("job %d %s", num, line)
    record_job_exit(EXIT_BUG)
    launch = os.environ.get(LAUNCH_ENV)
    for path in Path(str(sweep_dir)).rglob(STATUS_FILE):
        status = read_status(path.parent) or {}
        if (status.get("job_num"), status.get("status"), sorted(status.get("overrides") or [])) == (
            num,
            "running",
            sorted(overrides),
        ) and status.get("launch") in (None, launch):  # another launch's job of that number may be running now
            write_status(path.parent, {**status, "error": line})
    # Also when a dir matched: it may be an earlier launch's, which the summary leaves out; the summary
    # keeps this row only for a job with no dir of this launch.
    record_unstarted_job(num, overrides, line)
    return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=FailedJob(line, EXIT_BUG))
