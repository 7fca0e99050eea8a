"""A cluster job pre-empted part-way is requeued by submitit and finishes as if never interrupted.

The RELIABLE run goes through hydra/launcher=submitit_local (submitit's own code path, the one SLURM
uses). Part-way through fine-tuning the job gets SIGUSR2, the signal SLURM sends before a pre-emption
or a time-out: training finishes its batch, saves last.pth and hands the signal back to submitit,
which requeues the job; the new attempt resumes in the same run dir and must end with the same bits
as the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import forked_cli
import pytest
from helpers import registry

from reliability.faults import ENV, RELIABLE, bitwise_equal, main_args, metric_rows

pytestmark = pytest.mark.slow


def _job_dir(root: Path) -> Path | None:
    found = sorted((root / "multirun").glob("*/0_*/status.json"))  # job 0's dir: 0_<its overrides>
    return found[0].parent if found else None


def _wait_for_epoch(proc: subprocess.Popen, root: Path, timeout: float = 240.0) -> Path:
    """The job dir once one epoch is logged and a batch of the next has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job_dir(root)
        metrics = job / "metrics_log.csv" if job else None
        if metrics and metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            return job
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the job never finished its first epoch")


def test_preempted_job_is_requeued_and_resumes_exactly(tmp_path, reliable_data, uninterrupted):
    args = main_args(tmp_path, reliable_data, "-m", "hydra/launcher=submitit_local", *RELIABLE)
    args.insert(2, args.pop(args.index("-m")))  # Hydra wants -m before the overrides
    proc = forked_cli.start(args[2:], tmp_path, ENV)
    job = _wait_for_epoch(proc, tmp_path)
    first = json.loads((job / "status.json").read_text())
    time.sleep(0.3)  # land inside the second epoch
    os.kill(first["pid"], signal.SIGUSR2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err

    log = (job / "run.log").read_text()
    assert "SIGUSR2: stopped after epoch" in log and "last.pth saved" in log
    assert "Requeued job" in log and "attempt 2 of launcher job" in log
    final = json.loads((job / "status.json").read_text())
    assert final["status"] == "finished" and final["attempt"] == 2 and final["pid"] != first["pid"]
    assert final["launcher_job_id"] == first["launcher_job_id"]

    assert bitwise_equal(job / "best.pth", uninterrupted / "best.pth")
    assert bitwise_equal(job / "last.pth", uninterrupted / "last.pth")
    assert metric_rows(job) == metric_rows(uninterrupted)
    [entry] = registry(tmp_path)["runs"]
    assert entry["status"] == "finished" and entry["run_dir"] == str(job)
