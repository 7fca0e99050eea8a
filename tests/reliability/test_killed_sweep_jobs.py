"""A sweep job killed without a word (SIGKILL, as the out-of-memory killer does it) under the
parallel launchers: joblib's dead worker took the whole sweep down with a traceback and no summary,
submitit's job without a result ended the sweep at it (hydra_plugins/deepfake_launchers/).

Apart from test_sweeps.py so that the test workers (one file each) share the sweeps' time.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import forked_cli
import pytest
from conftest import TINY
from helpers import assert_consistent_best, job_dirs, only_sweep_dir, summary

from reliability.faults import ENV

pytestmark = pytest.mark.slow


def _sweep_with_job_zero_killed(
    root: Path,
    data_dir: Path,
    *launcher: str,
    once: str = "last.pth",
    job_one_started: bool = False,
    seeds: str = "1,2",
) -> tuple[int, str, str]:
    """A sweep of a job per seed (two), long enough to be caught training; job 0's process is SIGKILLed,
    as the out-of-memory killer does it, once ``once`` is in its dir (last.pth: its first epoch is saved;
    status.json: it has started), and with ``job_one_started`` once job 1 has started too. Returns
    (exit status, out, err)."""
    proc = forked_cli.start(["-m", f"paths.root_dir={root}", f"paths.data_dir={data_dir}", *TINY, f"seed={seeds}",
                             "phase.finetune_epochs=3", "dataset.batch_size=4", *launcher], root, ENV)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (found := list(root.glob(f"multirun/*/0_*/{once}"))) or (
        job_one_started and not list(root.glob("multirun/*/1_*/status.json"))
    ):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.kill(json.loads((found[0].parent / "status.json").read_text())["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


def test_a_joblib_worker_killed_costs_its_jobs_a_relaunch_not_the_sweep(tmp_path, shared_data_dir):
    """joblib answered a dead worker with a traceback, no summary, and the sibling job killed too."""
    code, out, err = _sweep_with_job_zero_killed(tmp_path, shared_data_dir, *JOBLIB)
    assert code == 0, out + err
    assert "a joblib worker process died (SIGKILL(-9): out of memory, or killed)" in out + err
    assert "relaunching job(s) 0" in out + err and "(1 of hydra.launcher.relaunches=1)" in out + err
    sweep_dir = only_sweep_dir(tmp_path)
    first = job_dirs(sweep_dir)[0]
    assert "was left running by an earlier launch of this sweep: resuming it" in (first / "run.log").read_text()
    assert [row["status"] for row in summary(sweep_dir)] == ["finished", "finished"]
    assert_consistent_best(tmp_path, n_jobs=2)


def test_a_joblib_job_killed_in_every_launch_is_a_failed_job_in_the_summary(tmp_path, shared_data_dir):
    """Three jobs on two workers: job 2, waiting for a worker, is taken down before it starts, with no
    job dir for the summary to read; it was missing from it."""
    code, out, err = _sweep_with_job_zero_killed(tmp_path, shared_data_dir, *JOBLIB, "hydra.launcher.relaunches=0",
                                                 once="status.json", job_one_started=True, seeds="1,2,3")  # fmt: skip
    assert code == 1, out + err
    sweep_dir = only_sweep_dir(tmp_path)
    assert f"job 0 killed: the joblib worker running it died (SIGKILL(-9)); out of memory? relaunch the sweep with " \
           f"hydra.sweep.dir={sweep_dir} to resume it" in out + err  # fmt: skip
    assert len(job_dirs(sweep_dir)) == 2, f"job 2 started, so no job here was killed before its dir: {out + err}"
    rows = {row["job"]: row for row in summary(sweep_dir)}
    assert [(job, row["status"]) for job, row in sorted(rows.items())] == [
        ("0", "killed"),
        ("1", "killed"),
        ("2", "killed"),
    ]
    assert all(row["error"].startswith("killed: the joblib worker running it died") for row in rows.values())
    assert rows["2"]["overrides"] == "seed=3" and rows["2"]["run_dir"] == ""
    assert "sweep: 3 job(s), 3 failed" in out, out


def test_a_killed_submitit_job_is_a_failed_job_and_the_sweep_waits_for_the_others(tmp_path, shared_data_dir):
    """submitit's UncompletedJobError ended the sweep at the first job without a result: a traceback, no
    summary, the later jobs left running unwatched."""
    code, out, err = _sweep_with_job_zero_killed(tmp_path, shared_data_dir, "hydra/launcher=submitit_local")
    assert code == 1, out + err
    sweep_dir = only_sweep_dir(tmp_path)
    assert "job 0 killed: its local job" in out + err
    assert f"ended without a result (submitit's state: FINISHED); out of memory? relaunch the sweep with " \
           f"hydra.sweep.dir={sweep_dir} to resume it" in out + err  # fmt: skip
    rows = summary(sweep_dir)
    assert [(row["job"], row["status"]) for row in rows] == [("1", "finished"), ("0", "killed")]
    assert rows[1]["error"].startswith("killed: its local job") and not rows[0]["error"]
