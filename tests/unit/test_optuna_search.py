"""The Optuna preset's sweeper: a new study created by launches started together, and when failed
trials end a search (hydra_plugins/deepfake_optuna/optuna_search.py)."""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import ConfigCompositionException

from deepfake.tasks.jobs import FailedJob

# Named through the module at each use: Hydra's plugin scan, run by other tests, re-executes it.
from hydra_plugins.deepfake_optuna import optuna_search

LAUNCHES = 4


def _launch_opens_its_study(url: str, ready) -> None:
    """What a launch does with the study before its first trial: the sweeper's preparation, then the
    plugin's own create_study."""
    sweeper = SimpleNamespace(storage=url, study_name="par", _get_directions=lambda: ["maximize"])
    ready.wait()
    optuna_search._prepare_study(sweeper)
    optuna.create_study(study_name="par", storage=url, directions=["maximize"], load_if_exists=True)


def test_launches_of_a_new_study_started_together_all_open_it(tmp_path):
    """They raced to create the sqlite storage's tables: one ended in sqlite's traceback
    (alembic_version's UNIQUE constraint, a table that already exists)."""
    context = multiprocessing.get_context("fork")
    for attempt in range(4):  # the race was lost in about half the launches of two
        url = f"sqlite:///{tmp_path / f'study{attempt}.db'}"
        ready = context.Barrier(LAUNCHES)
        launches = [context.Process(target=_launch_opens_its_study, args=(url, ready)) for _ in range(LAUNCHES)]
        for launch in launches:
            launch.start()
        for launch in launches:
            launch.join(timeout=120)
        assert [launch.exitcode for launch in launches] == [0] * LAUNCHES, f"attempt {attempt}"
        [study] = optuna.get_all_study_summaries(url)
        assert study.study_name == "par" and study.direction == optuna.study.StudyDirection.MAXIMIZE


class _Launcher:
    """Returns each job's scripted outcome: a metric, or a FailedJob."""

    def __init__(self, outcomes):
        self.outcomes, self.launched = iter(outcomes), []

    def launch(self, job_overrides, initial_job_idx):
        self.launched.extend(job_overrides)
        return [JobReturn(overrides=list(o), status=JobStatus.COMPLETED, _return_value=next(self.outcomes))
                for o in job_overrides]  # fmt: skip


class _Loader:
    def load_sweep_config(self, config, overrides):
        if "backbone=nosuch" in overrides:
            raise ConfigCompositionException("Could not find 'backbone/nosuch'")


BAD = FailedJob("diverged", 2)


def _marking(outcomes, n_trials: int, max_failure_rate: float = 0.5):
    """The sweeper's launcher over scripted jobs, for a launch of ``n_trials``."""
    launcher = _Launcher(outcomes)
    sweeper = SimpleNamespace(n_trials=n_trials, max_failure_rate=max_failure_rate)
    return (
        launcher,
        sweeper,
        optuna_search._MarkingFailures(launcher, SimpleNamespace(config_loader=_Loader()), None, sweeper),
    )


def test_a_search_ends_once_more_than_its_share_of_the_launchs_trials_failed():
    """The first failed trial of a search ended it (1 of the 1 run so far), and so did 2 of the first 3:
    the share is of the trials the launch runs. 0.5 of 5: the third failure ends it, not sooner."""
    launcher, _, marking = _marking([BAD, 0.9, BAD, 0.8], n_trials=5)
    jobs = [marking.launch([trial], 0)[0] for trial in (["lr=1"], ["lr=2"], ["backbone=nosuch"], ["lr=3"])]
    assert jobs[0].return_value is BAD  # recorded failed (its value is no number), and the search goes on
    # The trial that cannot be composed is not launched, and fails with its line: the second failure.
    assert ["backbone=nosuch"] not in launcher.launched
    assert [job.status for job in jobs] == [JobStatus.COMPLETED] * 3 + [JobStatus.FAILED]
    assert (marking.failed, marking.launched, marking.planned) == (3, 4, 5)
    with pytest.raises(optuna_search.TrialFailed, match="diverged"):  # where the plugin reads it: the search ends
        _ = jobs[3].return_value


@pytest.mark.parametrize(("max_failure_rate", "ends_at"), [(0.0, 1), (0.25, 2), (1.0, None)])
def test_the_share_bounds_a_search_at_either_end(max_failure_rate, ends_at):
    """0: the first failure ends it; 1: none does. Every trial here fails."""
    _, _, marking = _marking([BAD] * 4, n_trials=4, max_failure_rate=max_failure_rate)
    statuses = [marking.launch([[f"lr={n}"]], n)[0].status for n in range(4)]
    ended = [n + 1 for n, status in enumerate(statuses) if status == JobStatus.FAILED]
    assert (ended[0] if ended else None) == ends_at


def test_a_batch_within_the_share_still_ends_a_search_past_it():
    """The plugin ends a search on its batch's share alone: 0.5 of 6 trials in batches of 2, the fourth
    failure comes in a batch of one failure in two, which it would have let go on."""
    _, sweeper, marking = _marking([BAD, BAD, BAD, 0.9, BAD, 0.8], n_trials=6)
    batches = [marking.launch([["lr=1"], ["lr=2"]], n) for n in (0, 2, 4)]
    assert [job.status for batch in batches[:2] for job in batch] == [JobStatus.COMPLETED] * 4
    assert [job.status for job in batches[2]] == [JobStatus.FAILED, JobStatus.COMPLETED]
    # What the plugin's own check of the batch reads: this batch's share, 1 of 2, is now past it.
    assert sweeper.max_failure_rate == 0.0
