"""hparams_search=optuna: hydra-optuna-sweeper, with the search ending as README says when trials fail.

A failed job returns a :class:`~deepfake.tasks.jobs.FailedJob` with Hydra's status COMPLETED, so
that the basic and joblib sweeps go on past it. The plugin records such a trial as failed (its value
is not a number), but its ``max_failure_rate`` check only stops on a job whose status is FAILED, so
the search never ended; and when no trial finished, ``study.best_trial`` raised a traceback, before
the sweep's summary was written. Here the launcher's returns of failed jobs are marked FAILED, which
the plugin then counts, and an ended search, or one without a finished trial, is one ERROR line; the
sweep then ends as every sweep does: its summary, and exit status 2.

The plugin judges ``max_failure_rate`` per batch of ``n_jobs`` trials: with one trial a batch, the
first failure of a 20-trial search ended it, and so did a share of the trials run so far (1 of 1).
Here the share is of the trials this launch will run, ``n_trials``: the search ends at the failure
that takes it past ``max_failure_rate`` of them, when the launch could no longer end within it, and
not before, whatever the batches. A trial whose config cannot be
composed (a ``choice`` naming a group option that does not exist) is a failed trial with its line,
not a traceback that left the batch's trials running in the study forever.

A launch stopped by a signal (Ctrl-C, SIGTERM: the job saves last.pth and the sweep ends) left the
trials of its batch RUNNING in the study forever, where optuna's own ``study.optimize`` fails a
trial that a KeyboardInterrupt ends. Here they are failed too, with the stop in their
``fail_reason``, before the launch exits.

A study continued with another direction, or with a parameter searched over another space (an
interval now a ``choice``, a ``choice`` of other options), was optuna's traceback, and the trial
asked for the space stayed RUNNING: here it is one ERROR line naming what changed, the trial failed.

Optuna creates a new sqlite storage's tables unguarded: two launches of a new study at once raced
there, and one ended in sqlite's traceback (optuna/optuna#4621). Here a launch creates the storage
and the study under a lock file beside the database, so later launches only read them.

The preset's sampler is seeded, and a seeded sampler proposes the same points to every process that
starts it with the same seed and study: two launches of one study at once sampled the same trials.
Optuna's advice for processes sharing a study's storage is a sampler per process with a seed of its
own; here each launch seeds its sampler with the preset's seed plus the number of the first trial it
asks, a number the storage gives one launch alone (see :class:`SeededPerLaunch`).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import ConfigCompositionException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from deepfake.errors import ConfigError, error_line
from deepfake.tasks import values
from deepfake.tasks.jobs import EXIT_USER_ERROR, FailedJob, record_job_exit, record_sweep_exit
from deepfake.tasks.sweep_summary import record_unstarted_job

log = logging.getLogger(__name__)


class TrialFailed(Exception):
    """A failed trial's error line, raised where the plugin reads the trial's value."""


class _PluginsEndingLine(logging.Filter):
    """Drops the plugin's own ERROR as it ends a search ("Failed [<exceptions>] times out of N with
    max_failure_rate=R"): the reprs of the failures, and R is 0 when a batch within the share ended it
    (_MarkingFailures); the sweeper's line says what happened in words."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "times out of" not in message or "with max_failure_rate=" not in message


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
        logging.getLogger(type(self.sweeper).__module__).addFilter(_PluginsEndingLine())
        self.sweeper.launcher = _MarkingFailures(self.sweeper.launcher, hydra_context, config, self.sweeper)
        self.in_flight: list = []  # the optuna trials of the batch being launched, not yet told
        configure = self.sweeper._configure_trials  # where the plugin turns the asked trials into overrides

        def configure_and_keep(trials, search_space, *args, **kwargs):
            self.in_flight = list(trials)
            try:
                return configure(trials, search_space, *args, **kwargs)
            except ValueError as error:  # optuna refused a parameter's space for this study
                line = _space_change(self.sweeper, trials, search_space)
                if line is None:
                    raise
                _fail_unfinished(self.in_flight, "the launch was refused: the search space changed")
                raise ConfigError(line) from error

        self.sweeper._configure_trials = configure_and_keep
        seed = OmegaConf.select(config, "hydra.sweeper.sampler.seed")
        if seed is not None and not OmegaConf.select(config, "hydra.sweeper.sampler._partial_", default=False):
            self.sweeper.sampler = SeededPerLaunch(
                lambda launch_seed: instantiate(config.hydra.sweeper.sampler, seed=launch_seed), int(seed)
            )

    def sweep(self, arguments: list[str]) -> None:
        try:
            _prepare_study(self.sweeper)
            return super().sweep(arguments)
        except TrialFailed:
            # Raised where the plugin reads a failed trial's value once too many have failed; each one's
            # line is already in its run.log and the summary.
            marking = self.sweeper.launcher
            log.error(
                "the search ended: %d of this launch's %d trials failed, more than hydra.sweeper.max_failure_rate=%s "
                "of them; see the summary below",
                marking.failed,
                marking.planned,
                marking.max_failure_rate,
            )
        except ConfigError as refused:  # the study cannot be continued as asked; no job has run
            print(error_line(str(refused)), file=sys.stderr)
            record_sweep_exit(EXIT_USER_ERROR)  # the entry point exits with it, after Hydra's own ending
        except ValueError as error:
            if "Record does not exist" not in str(error):  # optuna's study.best_trial, without a finished trial
                raise
            log.error("no trial of the search finished, so there is no best one; see the summary below")
        except BaseException as stop:  # a stop signal (RunStopped) or Ctrl-C: the launch ends here
            _fail_unfinished(self.in_flight, f"the launch was stopped ({_stop_name(stop)})")
            raise
        return None


class SeededPerLaunch:
    """The preset's sampler, seeded when this launch asks its first trial: with the preset's seed
    plus that trial's number.

    The storage numbers a study's trials one by one, so two launches of one study at once seed apart
    and do not propose the same trials (a seed offset by the trials found at the launch's start was the
    same for both); a small ``choice`` space may still give alike values by chance, as in any search.
    A launch run alone is seeded as before, by the trials the study held: the same command sequence
    gives the same trials. The price, as for any parallel optuna search, is that launches run
    at once are not reproducible: which trial numbers each gets, and what history it sees, depend on
    timing.
    """

    # Optuna's sampler interface, delegated; not a subclass of its BaseSampler, so that Hydra's scan of
    # the plugins, at every start of main.py, does not import optuna.
    def __init__(self, build: Callable[[int], Any], seed: int) -> None:
        self._build, self._seed = build, seed
        self._sampler = None

    def _seeded(self, trial):
        if self._sampler is None:
            self._sampler = self._build(self._seed + trial.number)
            log.info("sampler %s seeded %d: hydra.sweeper.sampler.seed=%d + %d, this launch's first trial",
                     type(self._sampler).__name__, self._seed + trial.number, self._seed, trial.number)  # fmt: skip
        return self._sampler

    def infer_relative_search_space(self, study, trial):
        return self._seeded(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._seeded(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._seeded(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._seeded(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        if self._sampler is not None:
            self._sampler.reseed_rng()


def _prepare_study(sweeper) -> None:
    """Opens the study before the plugin does: created, with its storage's tables, when new, under a
    lock beside a sqlite database, so that launches started together do not race to create them. A
    continued study keeps the direction it was created with (optuna refused another with a
    traceback); the trials it holds are logged: what a continued launch builds on."""
    import optuna

    if not sweeper.storage:
        return
    with _creation_lock(str(sweeper.storage)):
        storage = optuna.storages.get_storage(sweeper.storage)
        try:
            study = optuna.load_study(study_name=sweeper.study_name, storage=storage)
        except KeyError:  # no such study yet: this launch creates it
            optuna.create_study(
                study_name=sweeper.study_name,
                storage=storage,
                directions=sweeper._get_directions(),
                load_if_exists=True,
            )
            return
    log.info("continuing study %s (%d trials so far)", sweeper.study_name, len(study.trials))
    stored = [direction.name.lower() for direction in study.directions]
    asked = [str(direction).lower() for direction in sweeper._get_directions()]
    if stored != asked:
        raise ConfigError(
            f"hydra.sweeper.direction={','.join(asked)}: the study {sweeper.study_name} in {sweeper.storage} was "
            f"created to {','.join(stored)}, which it keeps; continue it with hydra.sweeper.direction="
            f"{','.join(stored)}, or start a new study with hydra.sweeper.study_name=<a new name>"
        )


def _creation_lock(url: str):
    """A lock file beside a sqlite database; other databases (a server's) take no local lock."""
    from filelock import FileLock
    from sqlalchemy.engine.url import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:  # not a database URL: optuna says what it makes of it
        return nullcontext()
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return nullcontext()
    return FileLock(f"{parsed.database}.lock")


def _space_change(sweeper, trials: list, search_space: dict) -> str | None:
    """The line naming a parameter that this launch searches over a space the study's earlier trials
    did not (optuna's error names none), or None when no parameter did."""
    from optuna.distributions import check_distribution_compatibility

    asked = {trial.number for trial in trials}
    earlier = [trial for trial in trials[0].study.get_trials(deepcopy=False) if trial.number not in asked]
    for name, wanted in search_space.items():
        for trial in earlier:
            searched = trial.distributions.get(name)
            try:
                if searched is not None:
                    check_distribution_compatibility(searched, wanted)
            except ValueError:
                return (f"the study {sweeper.study_name} in {sweeper.storage} searched {name} over {searched}, and "
                        f"this launch asks {wanted}; search the study's space, or start a new study with "
                        "hydra.sweeper.study_name=<a new name>")  # fmt: skip
    return None


def _fail_unfinished(trials: list, reason: str) -> None:
    """Fails the ``trials`` the study still holds as RUNNING, as optuna's own optimize fails the
    trial a KeyboardInterrupt ends; their jobs' run dirs say where each stopped."""
    from optuna.trial import TrialState

    for trial in trials:
        running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if trial.number not in {frozen.number for frozen in running}:
            continue
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
    more than ``max_failure_rate`` of the ``n_trials`` this launch runs have failed (before that they
    stay COMPLETED, with a value that is not a number: the plugin records the trial as failed and goes
    on). A job whose config cannot be composed is not launched: it comes back failed, with its line."""

    def __init__(self, launcher, hydra_context: HydraContext, config: DictConfig, sweeper) -> None:
        self.launcher, self.hydra_context, self.config = launcher, hydra_context, config
        self.sweeper = sweeper  # the plugin's: its n_trials, which a grid sampler lowers as the sweep starts
        self.max_failure_rate = float(sweeper.max_failure_rate)
        self.launched = self.failed = 0

    @property
    def planned(self) -> int:
        return int(self.sweeper.n_trials)

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
        if failed and self.failed / self.planned > self.max_failure_rate:
            for job in failed:
                job.status, job.return_value = JobStatus.FAILED, TrialFailed(job.return_value.error)
            if len(failed) / len(returns) <= self.sweeper.max_failure_rate:
                # The plugin ends a search on its batch's share alone, which this batch of n_jobs stays
                # within: a share of 0 makes its check end it at this batch, as any failure is past it.
                self.sweeper.max_failure_rate = 0.0
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
