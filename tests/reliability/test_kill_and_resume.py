"""Kill scripts/main.py at seeded random points, resume it, and demand the uninterrupted run's bits.

Each scenario starts the RELIABLE run and, at each of its stop points (the CSV reaching k rows, then a
random fraction of an epoch's duration), sends SIGKILL (nothing saved on the way out) or SIGINT (last.pth saved at the
next safe point); it then resumes, with ``resume=true`` or ``resume=<run dir>``. At the end best.pth and
last.pth must hold the same tensors as the uninterrupted run, metrics_log.csv the same rows (timings
aside), and the registry exactly one entry for the run; a SIGKILLed run's lock is taken over.
"""

from __future__ import annotations

import csv
import json
import random
import re
import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import registry

from reliability.faults import RELIABLE, bitwise_equal, csv_rows, kill, metric_rows, run, run_dir_of, start, wait_for

pytestmark = pytest.mark.slow

_rng = random.Random(6)  # the kill points are random, but the same on every run of the suite
# (signal, rows in metrics_log.csv before it is sent, then a delay in epochs); rows=0 aims at epoch 1.
SCENARIOS = {
    "sigkill in epoch 1": [(signal.SIGKILL, 0, _rng.uniform(0.0, 0.5))],
    "sigkill twice": [(signal.SIGKILL, 1, _rng.uniform(0.0, 1.0)), (signal.SIGKILL, 2, _rng.uniform(0.0, 1.0))],
    "sigint mid-run": [(signal.SIGINT, 1, _rng.uniform(0.0, 0.6))],
}


@dataclass
class Outcome:
    run_dir: Path | None = None
    landed: list[str] = field(default_factory=list)  # where each stop left last.pth
    stop_outputs: list[tuple[int, str]] = field(default_factory=list)  # (exit status, output) of stopped runs
    stopped_pids: list[int] = field(default_factory=list)
    final_status: int | None = None
    final_output: str = ""


def _where(run_dir: Path) -> str:
    last = run_dir / "last.pth"
    if not last.is_file():
        return "no last.pth"
    state = torch.load(last, weights_only=True)["trainer_state"]
    return f"epoch {state['epoch']} + {state['batches_done']} batches"


def _starts(run_dir: Path) -> int:
    """Processes that have started training in ``run_dir`` (each logs ``run <name> in <dir>`` once)."""
    log = run_dir / "run.log"
    return len(re.findall(r"\]\[INFO\] run \S+ in ", log.read_text())) if log.is_file() else 0


def _play(root: Path, data_dir: Path, stops: list, epoch_s: float) -> Outcome:
    outcome = Outcome()
    proc = start(root, data_dir, *RELIABLE)
    for number, (signum, rows, epochs) in enumerate(stops):
        if rows == 0:
            ready = wait_for(
                proc, root, lambda d: (d / "run.log").is_file() and "phase head" in (d / "run.log").read_text()
            )
        else:
            # A resumed process counts only once it holds the run (its "run ... in" line): the rows may
            # all be there already, and a kill during its start-up would test nothing.
            ready = wait_for(proc, root, lambda d, rows=rows, n=number: csv_rows(d) >= rows and _starts(d) > n)
        assert ready is not None, proc.communicate()
        time.sleep(epochs * epoch_s)
        outcome.stopped_pids.append(proc.pid)
        status, out, err = kill(proc, signum)
        outcome.stop_outputs.append((status, out + err))
        outcome.landed.append(_where(ready))
        # Alternate the two spellings: the latest run, and the run dir by name.
        proc = start(root, data_dir, "resume=true" if number % 2 == 0 else f"resume={ready}")
    out, err = proc.communicate(timeout=300)
    outcome.final_status, outcome.final_output = proc.returncode, out + err
    outcome.run_dir = run_dir_of(root)
    return outcome


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, reliable_data, uninterrupted) -> dict[str, Outcome]:
    roots = {name: tmp_path_factory.mktemp("kill") for name in SCENARIOS}
    epoch_s = statistics.median(
        float(row["seconds"]) for row in csv.DictReader((uninterrupted / "metrics_log.csv").open())
    )
    with ThreadPoolExecutor(max_workers=2) as pool:  # one thread per run, two cores
        futures = {
            name: pool.submit(_play, roots[name], reliable_data, stops, epoch_s) for name, stops in SCENARIOS.items()
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_resumed_run_is_bitwise_the_uninterrupted_run(scenario, outcomes, uninterrupted):
    outcome = outcomes[scenario]
    assert outcome.final_status == 0, outcome.final_output
    run_dir = outcome.run_dir
    assert len(list(run_dir.parent.iterdir())) == 1  # resumed in place, no second run dir
    # A stop sent once an epoch's row is written finds a last.pth to resume from (not a restart).
    for (_, rows, _), landed in zip(SCENARIOS[scenario], outcome.landed):
        assert not rows or landed != "no last.pth", outcome.landed
    assert bitwise_equal(run_dir / "best.pth", uninterrupted / "best.pth"), outcome.landed
    assert bitwise_equal(run_dir / "last.pth", uninterrupted / "last.pth"), outcome.landed
    assert metric_rows(run_dir) == metric_rows(uninterrupted), outcome.landed
    entries = registry(run_dir.parents[2])["runs"]
    assert [e["run_name"] for e in entries] == [run_dir.name]
    assert entries[0]["status"] == "finished" and entries[0]["epochs"] == 3
    assert not [p for p in run_dir.iterdir() if ".tmp." in p.name or p.name == "run.lock"]
    # A SIGKILLed run leaves its lock behind: the next run takes it over, saying so once (run.log, unwrapped);
    # SIGTERM and SIGINT release it on the way out.
    takeovers = [line for line in (run_dir / "run.log").read_text().splitlines() if "took over the stale lock" in line]
    killed = [pid for pid, (signum, *_) in zip(outcome.stopped_pids, SCENARIOS[scenario]) if signum == signal.SIGKILL]
    assert len(takeovers) == len(killed)
    assert all(f"PID {pid} is no longer running" in line for pid, line in zip(killed, takeovers))
    print(f"{scenario}: stops landed at {outcome.landed}")


# SIGTERM's own path (SLURM's stop) is played by test_trainer_faults, test_one_writer and the
# distributed tests; here Ctrl-C's.
@pytest.mark.parametrize("scenario", ["sigint mid-run"])
def test_stop_signal_saves_and_says_how_to_resume(scenario, outcomes):
    outcome = outcomes[scenario]
    signum = SCENARIOS[scenario][0][0]
    status, output = outcome.stop_outputs[0]
    assert status == 128 + signum, output
    assert "Traceback" not in output
    hints = [line for line in output.splitlines() if "resume with: python scripts/main.py resume=" in line]
    assert len(hints) == 1 and str(outcome.run_dir) in hints[0]
    assert outcome.landed[0] != "no last.pth"


@pytest.mark.parametrize(("signum", "said"), [(signal.SIGINT, "Ctrl-C (SIGINT)"), (signal.SIGTERM, "SIGTERM")])
def test_a_stop_before_training_ends_with_one_line_not_a_traceback(tmp_path, reliable_data, signum, said):
    """Ctrl-C while a run sets up (its images scanned, its model built) was a KeyboardInterrupt traceback:
    outside training's loop, which saves and stops at a batch's end. SIGTERM there (a scheduler's
    pre-emption) killed the run without a word: status.json left "running", run.lock behind. Wherever
    either lands once the job has begun (status.json written), the run ends with one line, the
    shell's status for the signal, its status "stopped" and its lock released."""
    proc = start(tmp_path, reliable_data, *RELIABLE)
    run_dir = wait_for(proc, tmp_path, lambda run_dir: (run_dir / "status.json").is_file())
    assert run_dir is not None, proc.communicate()
    status, out, err = kill(proc, signum)
    assert status == 128 + signum and "Traceback" not in err, err
    assert f"stopped by {said}" in err or "resume with: python scripts/main.py resume=" in out + err, out + err
    assert json.loads((run_dir / "status.json").read_text())["status"] == "stopped"
    assert not (run_dir / "run.lock").exists()


def test_a_run_killed_in_its_closing_cam_is_resumed_to_the_end(tmp_path, reliable_data):
    """train.do_cam ran after the run was registered as finished: killed in it, the run was stuck, its
    CAM never made, resume calling it finished and prune calling it unfinished. Registering is now the
    last step: the killed run is not registered, and its resume makes the CAM and registers it."""
    args = [*RELIABLE, "train.do_cam=true", "cam.num_samples=4", "cam.metric_samples=8"]
    proc = start(tmp_path, reliable_data, *args)

    def in_cam(run_dir: Path) -> bool:
        log_file = run_dir / "run.log"
        return log_file.is_file() and "CAM: gradcam maps of" in log_file.read_text()

    run_dir = wait_for(proc, tmp_path, in_cam)
    assert run_dir is not None, proc.communicate()
    kill(proc)
    registry = tmp_path / "models" / "model_metadata.json"
    assert not registry.is_file() or not json.loads(registry.read_text())["runs"]
    resumed = run(tmp_path, reliable_data, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    [entry] = json.loads(registry.read_text())["runs"]
    assert entry["status"] == "finished" and "road_combined" in entry["cam_metrics"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    assert (run_dir / "cam" / "index.html").is_file()
