"""hparams_search=optuna: hydra-optuna-sweeper, with the search ending as README says when trials fail.

A failed job returns a :class:`~deepfake.tasks.jobs.FailedJob` with Hydra's status COMPLETED, so
that the basic and joblib sweeps go on past it. The plugin records such a trial as failed (its value
is not a number), but its ``max_failure_rate`` check only stops on a job whose status is FAILED, so
the search never ended; and when no trial finished, ``study.best_trial`` raised a traceback, before
the sweep's summary was written. Here the launcher's returns of failed jobs are marked FAILED, which
the plugin then counts, and an ended search, or one without a finished trial, is one ERROR line; the
sweep then ends as every sweep does: its summary, and exit status 2.

The plugin judges ``max_failure_rate`` per batch of ``n_jobs`` trials: with one trial a batch, the
first failure of a 20-trial search ended it. Here a failed trial ends the search only once more
than that share of this launch's trials so far has failed too. A trial whose config cannot be
composed (a ``choice`` naming a group option that does not exist) is a failed trial with its line,
not a traceback that left the batch's trials running in the study forever.

A launch stopped by a signal (Ctrl-C, SIGTERM: the job saves last.pth and the sweep ends) left the
trials of its batch RUNNING in the study forever, where optuna's own ``study.optimize`` fails a
trial that a KeyboardInterrupt ends. Here they are failed too, with the stop in their
``fail_reason``, before the launch exits.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import ConfigCompositionException
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, ListConfig
from omegaconf.errors import OmegaConfBaseException

from deepfake.errors import ConfigError, error_line
from deepfake.tasks import values
from deepfake.tasks.jobs import EXIT_USER_ERROR, FailedJob, record_job_exit
from deepfake.tasks.sweep_summary import record_unstarted_job

log = logging.getLogger(__name__)


class TrialFailed(Exception):
    """A failed trial's error line, raised where the plugin reads the trial's value."""


class OptunaSearch(OptunaSweeper):
    def __init__(self, **settings) -> None:
        try:  # the plugin asserts some of them here, with an empty AssertionError
            _check_settings(settings)
        except ConfigError as error:  # before any job: no run dir, no summary
            print(error_line(str(error)), file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        super().__init__(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.sweeper.launcher = _MarkingFailures(
            self.sweeper.launcher, hydra_context, config, float(config.hydra.sweeper.max_failure_rate)
        )
        self.in_flight: list = []  # the optuna trials of the batch being launched, not yet told
        configure = self.sweeper._configure_trials  # where the plugin turns the asked trials into overrides

        def configure_and_keep(trials, *args, **kwargs):
            self.in_flight = list(trials)
            return configure(trials, *args, **kwargs)

        self.sweeper._configure_trials = configure_and_keep

    def sweep(self, arguments: list[str]) -> None:
        try:
            return super().sweep(arguments)
        except TrialFailed:
            # The plugin raises a failed trial's error when too many of a batch failed; each one's line
            # is already in its run.log and the summary.
            log.error("the search ended: more than hydra.sweeper.max_failure_rate=%s of a batch of trials failed; "
                      "see the summary below", self.sweeper.max_failure_rate)  # fmt: skip
        except ValueError as error:
            if "Cannot set different distribution kind" in str(error):  # a search space the study never had
                print(error_line(f"the study {self.sweeper.study_name} in {self.sweeper.storage} searched another "
                                 f"space for a parameter ({error}); start a new study with "
                                 "hydra.sweeper.study_name=<a new name>"), file=sys.stderr)  # fmt: skip
                raise SystemExit(EXIT_USER_ERROR) from None
            if "Record does not exist" not in str(error):  # optuna's study.best_trial, without a finished trial
                raise
            log.error("no trial of the search finished, so there is no best one; see the summary below")
        except BaseException as stop:  # a stop signal (RunStopped) or Ctrl-C: the launch ends here
            _fail_unfinished(self.in_flight, stop)
            raise
        return None


def _fail_unfinished(trials: list, stop: BaseException) -> None:
    """Fails the ``trials`` the study still holds as RUNNING, as optuna's own optimize fails the
    trial a KeyboardInterrupt ends; their jobs' run dirs say where each stopped."""
    from optuna.trial import TrialState

    for trial in trials:
        running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if trial.number not in {frozen.number for frozen in running}:
            continue
        reason = f"the launch was stopped ({_stop_name(stop)})"
        trial.set_user_attr("fail_reason", reason)
        trial.study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d: %s; recorded as failed in the study", trial.number, reason)


def _stop_name(stop: BaseException) -> str:
    signum = getattr(stop, "signum", None)  # RunStopped's
    return signal.Signals(signum).name if signum is not None else type(stop).__name__


def _check_settings(sweeper) -> None:
    """The sweeper settings Optuna or the plugin would refuse with a traceback (or, for n_trials=0,
    a missing results file)."""
    for key in ("n_trials", "n_jobs"):
        values.positive_int(sweeper[key], f"hydra.sweeper.{key}")
    rate = values.number(sweeper["max_failure_rate"], "hydra.sweeper.max_failure_rate")
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"hydra.sweeper.max_failure_rate={rate:g} must be a share between 0 and 1")
    direction = sweeper["direction"]
    directions = direction if isinstance(direction, (ListConfig, list, tuple)) else [direction]
    for direction in directions:
        if str(direction).lower() not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.direction={direction} must be maximize or minimize")


class _MarkingFailures:
    """The plugin's launcher, whose failed jobs come back with status FAILED and their error line once
    more than ``max_failure_rate`` of this launch's trials have failed (before that they stay COMPLETED,
    with a value that is not a number: the plugin records the trial as failed and goes on). A job whose
    config cannot be composed is not launched: it comes back failed, with its line."""

    def __init__(self, launcher, hydra_context: HydraContext, config: DictConfig, max_failure_rate: float) -> None:
        self.launcher, self.hydra_context, self.config = launcher, hydra_context, config
        self.max_failure_rate = max_failure_rate
        self.launched = self.failed = 0

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        unbuildable = {index: line for index, overrides in enumerate(job_overrides)
                       if (line := self._composition_error(overrides)) is not None}  # fmt: skip
        runnable = [overrides for index, overrides in enumerate(job_overrides) if index not in unbuildable]
        launched = iter(self.launcher.launch(runnable, initial_job_idx) if runnable else [])
        # The launcher numbers the runnable jobs from initial_job_idx; the rest of the batch's numbers
        # go to the jobs not launched, each a row of the sweep's summary without a dir.
        for num, index in enumerate(unbuildable, initial_job_idx + len(runnable)):
            record_unstarted_job(num, list(job_overrides[index]), unbuildable[index], composed=False)
        returns = []
        for index, overrides in enumerate(job_overrides):
            if index in unbuildable:
                returns.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                                         _return_value=FailedJob(unbuildable[index], EXIT_USER_ERROR)))  # fmt: skip
            else:
                returns.append(next(launched))
        failed = [
            job for job in returns if job.status == JobStatus.COMPLETED and isinstance(job.return_value, FailedJob)
        ]
        self.launched, self.failed = self.launched + len(returns), self.failed + len(failed)
        if self.failed / self.launched > self.max_failure_rate:
            for job in failed:
                job.status, job.return_value = JobStatus.FAILED, TrialFailed(job.return_value.error)
        return returns

    def _composition_error(self, overrides: Sequence[str]) -> str | None:
        """The one line of a trial whose config cannot be composed, as the launcher would compose it."""
        try:
            self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        except (ConfigCompositionException, OmegaConfBaseException) as error:
            line = " ".join(str(error).split())
            log.error("trial %s cannot be composed: %s", " ".join(overrides), line)
            record_job_exit(EXIT_USER_ERROR)
            return f"{line} (overrides: {' '.join(overrides)})"
        return None

    def __getattr__(self, name: str):
        return getattr(self.launcher, name)
