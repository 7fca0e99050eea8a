"""What a launcher returns for a job that ended without a word (SIGKILL, out of memory)."""

from __future__ import annotations

import logging

from hydra.core.utils import JobReturn, JobStatus

from deepfake.tasks.jobs import EXIT_BUG, FailedJob, record_job_exit

log = logging.getLogger(__name__)


def killed_job(num: int, overrides: list[str], why: str, sweep_dir) -> JobReturn:
    """A failed job (a sweep goes on past it; Optuna records a failed trial) with its line. Its
    status.json still says running, which the sweep's summary lists as killed."""
    line = f"killed: {why}; out of memory? relaunch the sweep with hydra.sweep.dir={sweep_dir} to resume it"
    log.error("job %d %s", num, line)
    record_job_exit(EXIT_BUG)
    return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=FailedJob(line, EXIT_BUG))
