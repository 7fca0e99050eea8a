"""hparams_search=optuna: hydra-optuna-sweeper, with the search ending as README says when trials fail.

A failed job returns a :class:`~deepfake.tasks.jobs.FailedJob` with Hydra's status COMPLETED, so
that the basic and joblib sweeps go on past it. The plugin records such a trial as failed (its value
is not a number), but its ``max_failure_rate`` check only stops on a job whose status is FAILED, so
the search never ended; and when no trial finished, ``study.best_trial`` raised a traceback, before
the sweep's summary was written. Here the launcher's returns of failed jobs are marked FAILED, which
the plugin then counts, and an ended search, or one without a finished trial, is one ERROR line; the
sweep then ends as every sweep does: its summary, and exit status 2.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig

from deepfake.errors import ConfigError, error_line
from deepfake.tasks import values
from deepfake.tasks.jobs import EXIT_USER_ERROR, FailedJob

log = logging.getLogger(__name__)


class TrialFailed(Exception):
    """A failed trial's error line, raised where the plugin reads the trial's value."""


class OptunaSearch(OptunaSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        try:  # 0 or fewer: no trial ran, and then the plugin's results file was missing (a traceback)
            for key in ("n_trials", "n_jobs"):
                values.positive_int(config.hydra.sweeper[key], f"hydra.sweeper.{key}")
        except ConfigError as error:  # before any job: no run dir, no summary; Hydra would print a traceback
            print(error_line(str(error)), file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.sweeper.launcher = _MarkingFailures(self.sweeper.launcher)

    def sweep(self, arguments: list[str]) -> None:
        try:
            return super().sweep(arguments)
        except TrialFailed:
            # The plugin raises a failed trial's error when too many of a batch failed; each one's line
            # is already in its run.log and the summary.
            log.error("the search ended: more than hydra.sweeper.max_failure_rate=%s of a batch of trials failed; "
                      "see the summary below", self.sweeper.max_failure_rate)  # fmt: skip
        except ValueError as error:
            if "Record does not exist" not in str(error):  # optuna's study.best_trial, without a finished trial
                raise
            log.error("no trial of the search finished, so there is no best one; see the summary below")
        return None


class _MarkingFailures:
    """The plugin's launcher, whose failed jobs come back with status FAILED and their error line."""

    def __init__(self, launcher) -> None:
        self.launcher = launcher

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = self.launcher.launch(job_overrides, initial_job_idx)
        for job in returns:
            if job.status == JobStatus.COMPLETED and isinstance(job.return_value, FailedJob):
                job.status, job.return_value = JobStatus.FAILED, TrialFailed(job.return_value.error)
        return returns

    def __getattr__(self, name: str):
        return getattr(self.launcher, name)
