"""task=prune and task=archive on a registry of real run dirs: one tiny training, copied under other names and dates."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import TINY, run_main
from helpers import error_lines

from deepfake.tracking.checkpoint import HOST
from deepfake.tracking.run_lock import RunDirLock

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data_dir) -> tuple[Path, dict]:
    """One real run dir and its registry entry."""
    root = tmp_path_factory.mktemp("trained")
    run_main(root, *TINY, "train.do_test=false", data_dir=shared_data_dir)
    [run_dir] = (root / "outputs" / "train").iterdir()
    [entry] = json.loads((root / "models" / "model_metadata.json").read_text())["runs"]
    return run_dir, entry


def fleet(root: Path, trained: tuple[Path, dict], runs: dict[str, tuple[float, str]], best: str) -> dict[str, Path]:
    """Copies of the trained run, each ended ``days`` ago with ``status``, registered; ``best`` the global best."""
    source, entry = trained
    now = datetime.now(timezone.utc)
    dirs, entries = {}, []
    for name, (days, status) in runs.items():
        run_dir = dirs[name] = root / "outputs" / "train" / name
        shutil.copytree(source, run_dir)
        when = (now - timedelta(days=days)).isoformat(timespec="seconds")
        status_file = run_dir / "status.json"
        status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "status": status, "started_at": when,
                                           "ended_at": when}))  # fmt: skip
        registered = "finished" if status == "finished" else "failed"
        entries.append({**entry, "run_name": name, "run_dir": str(run_dir), "status": registered, "ended_at": when})
    (root / "models").mkdir()
    registry = {"version": 1, "best_run": best, "runs": entries}
    (root / "models" / "model_metadata.json").write_text(json.dumps(registry))
    shutil.copy(source / "best.pth", root / "models" / "best_model.pth")
    return dirs


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_prune_dry_run_then_apply(tmp_path, trained):
    runs = {"best": (100, "finished"), "new": (1, "finished"), "mid": (10, "finished"), "old": (40, "finished"),
            "busy": (50, "finished"), "older": (60, "finished"), "resumable": (2, "stopped")}  # fmt: skip
    dirs = fleet(tmp_path, trained, runs, best="best")
    temp = dirs["older"] / f".last.pth.tmp.{HOST}.{dead_pid()}.0badc0de"
    temp.write_bytes(b"half a checkpoint")
    doomed = [dirs["old"] / "last.pth", dirs["older"] / "last.pth", temp]
    expected = sum(path.stat().st_size for path in doomed)
    prune = ("task=prune", "prune.keep_days=7", "prune.keep_last=2")

    with RunDirLock(dirs["busy"]):
        dry = run_main(tmp_path, *prune)
        assert all(path.is_file() for path in dirs.values() for path in (path / "last.pth", path / "best.pth"))
        assert temp.is_file()
        rows = {line.split("│")[1].strip(): line for line in dry.stdout.splitlines() if line.count("│") >= 4}
        assert {name for name, row in rows.items() if "prune" in row} == {"old", "older", f"older/{temp.name}"}
        assert "global best" in rows["best"] and "may be resumed" in rows["resumable"] and "run.lock" in rows["busy"]
        assert "#1" in rows["new"] and "#2" in rows["mid"]
        assert "dry run: would delete 2 last.pth and 1 temp file(s)" in dry.stdout
        assert f"({expected} bytes)" in dry.stdout

        applied = run_main(tmp_path, *prune, "prune.apply=true")
    assert "deleted 2 last.pth and 1 temp file(s)" in applied.stdout and f"({expected} bytes)" in applied.stdout
    assert not any(path.exists() for path in doomed)
    assert all((path / "best.pth").is_file() for path in dirs.values())
    assert {name for name, path in dirs.items() if (path / "last.pth").is_file()} == set(runs) - {"old", "older"}
    # Its lock let go, busy (50 days, #3 by end time) is no longer kept: the lock was all that kept it.
    after = run_main(tmp_path, *prune).stdout
    assert "would delete 1 last.pth and 0 temp file(s)" in after
    assert "keep_last=2" in after.split("busy")[1].splitlines()[0]


def test_a_run_killed_after_its_registration_counts_as_finished(tmp_path, trained):
    """Killed between registering and exiting, a run's status.json still says running: prune kept its
    last.pth for ever ("not finished: it may be resumed") while resume called it finished."""
    dirs = fleet(tmp_path, trained, {"best": (100, "finished"), "late": (40, "finished")}, best="best")
    status_file = dirs["late"] / "status.json"
    status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "status": "running", "ended_at": None}))
    dry = run_main(tmp_path, "task=prune", "prune.keep_days=7", "prune.keep_last=0")
    rows = {line.split("│")[1].strip(): line for line in dry.stdout.splitlines() if line.count("│") >= 4}
    assert "prune" in rows["late"] and "not finished" not in rows["late"], rows["late"]
    assert "would delete 1 last.pth" in dry.stdout


def test_prune_removes_the_temps_of_runs_killed_before_they_registered(tmp_path, trained):
    """A run killed in its first epoch is never registered: its half-written best.pth temp (as large
    as the model) stayed for ever, prune looking only in registered runs' dirs."""
    fleet(tmp_path, trained, {"best": (100, "finished")}, best="best")
    killed = tmp_path / "outputs" / "train" / "2026-01-01_00-00-00_dead"
    job = tmp_path / "multirun" / "2026-01-01_00-00-00_sweep" / "0_seed=1"
    temps = []
    for folder in (killed, job):
        folder.mkdir(parents=True)
        temps.append(folder / f".best.pth.tmp.{HOST}.{dead_pid()}.0badc0de")
        temps[-1].write_bytes(b"half a checkpoint")
    dry = run_main(tmp_path, "task=prune")
    assert "would delete 0 last.pth and 2 temp file(s)" in dry.stdout
    assert f"{killed.name}/{temps[0].name}" in dry.stdout and f"{job.parent.name}/{job.name}/" in dry.stdout
    assert "deleted 0 last.pth and 2 temp file(s)" in run_main(tmp_path, "task=prune", "prune.apply=true").stdout
    assert not any(temp.exists() for temp in temps) and killed.is_dir() and job.is_dir()


@pytest.mark.parametrize("mistake", ["prune.apply=flase", "prune.apply=1", "archive.remove=flase",
                                     "archive.allow_best=nope"])  # fmt: skip
def test_a_mistyped_deletion_switch_deletes_nothing(tmp_path, trained, mistake):
    """Text is true to Python: prune.apply=flase deleted last.pth, archive.remove=flase the run dir
    (only the words yes/no/on/off were refused)."""
    dirs = fleet(tmp_path, trained, {"best": (100, "finished"), "old": (40, "finished")}, best="best")
    before = sorted(path for path in tmp_path.rglob("*") if path.is_file())
    task = "task=" + mistake.split(".")[0]
    extra = ["prune.keep_days=7", "prune.keep_last=0"] if task == "task=prune" else ["archive.older_than_days=0"]
    result = run_main(tmp_path, task, mistake, *extra, check=False)
    assert result.returncode == 2 and error_lines(result) == [
        f"ERROR {mistake} is not true or false; this setting takes true or false"
    ], result.stdout + result.stderr
    assert sorted(path for path in tmp_path.rglob("*") if path.is_file() and "outputs/prune" not in str(path)
                  and "outputs/archive" not in str(path)) == before and (dirs["old"] / "last.pth").is_file()  # fmt: skip


def test_archive_packs_marks_and_removes_but_never_a_live_run(tmp_path, trained):
    runs = {"best": (100, "finished"), "a": (30, "finished"), "b": (20, "finished"), "busy": (50, "finished"),
            "fresh": (1, "finished")}  # fmt: skip
    dirs = fleet(tmp_path, trained, runs, best="best")
    archive_dir = tmp_path / "archive"

    with RunDirLock(dirs["busy"]):
        locked = run_main(tmp_path, "task=archive", "archive.runs=[busy]", check=False)
        assert locked.returncode == 2 and len(error_lines(locked)) == 1
        assert f"{dirs['busy']} is being written by PID" in error_lines(locked)[0]
        best = run_main(tmp_path, "task=archive", "archive.runs=[best]", check=False)
        assert best.returncode == 2 and "archive.allow_best=true" in error_lines(best)[0]
        assert not archive_dir.exists()

        # b by its dir, a by its age; the best (older still) and busy (locked) are left out
        done = run_main(tmp_path, "task=archive", f"archive.runs=[{dirs['b']}]", "archive.older_than_days=25",
                        "archive.remove=true")  # fmt: skip
    [archive] = archive_dir.iterdir()
    assert archive.name.endswith(".tar.gz") and str(archive) in done.stdout
    with tarfile.open(archive) as tar:
        members = set(tar.getnames())
    for name in ("a", "b"):
        assert {
            f"{name}/{file}" for file in ("best.pth", "last.pth", "metrics_log.csv", ".hydra/config.yaml")
        } <= members
        assert not dirs[name].exists()
    assert not any(member.split("/")[0] not in {"a", "b"} or member.endswith("run.lock") for member in members)
    assert all(dirs[name].is_dir() for name in ("best", "busy", "fresh"))

    entries = {e["run_name"]: e for e in json.loads((tmp_path / "models" / "model_metadata.json").read_text())["runs"]}
    assert {name for name, entry in entries.items() if "archived" in entry} == {"a", "b"}
    assert entries["a"]["archived"]["path"] == str(archive) and entries["a"]["archived"]["run_dir_removed"] is True
    assert entries["a"]["status"] == "finished"  # how the run ended; archived is where it went

    listed = run_main(tmp_path, "task=registry")
    assert listed.stdout.count("(run dir missing)") == 2 and "fresh" in listed.stdout
