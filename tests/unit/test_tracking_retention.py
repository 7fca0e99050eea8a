"""task=prune's rules (deepfake.tracking.retention) and task=archive's verified archives (deepfake.tracking.archive)."""

from __future__ import annotations

import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from deepfake.errors import ArchiveError
from deepfake.tracking import archive
from deepfake.tracking.retention import RunState, parse_time, plan_prune

NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)


def state(name: str, days_ago: float | None, status: str = "finished", *, locked: bool = False, size: int = 100):
    when = None if days_ago is None else NOW - timedelta(days=days_ago)
    return RunState(name, Path("/runs") / name, status, when, size, locked)


def plan(runs, **rules) -> dict[str, bool]:
    return {d.run.run_name: d.prune for d in plan_prune(runs, best_run="best", now=NOW, **rules)}


RUNS = [state("new", 1), state("mid", 10), state("old", 40), state("older", 60), state("best", 100)]


def test_a_run_keeps_its_last_pth_if_either_rule_keeps_it():
    # newest first: new (1 d), mid (10 d), old, older; best is never pruned whatever its age or rank
    pruned = {
        (7, 2): {"old", "older"},
        (45, 1): {"older"},
        (None, 1): {"mid", "old", "older"},
        (7, None): {"mid", "old", "older"},
        (None, None): {"new", "mid", "old", "older"},  # no rule keeps anything
    }
    for (keep_days, keep_last), expected in pruned.items():
        decided = plan(RUNS, keep_days=keep_days, keep_last=keep_last)
        assert {name for name, prune in decided.items() if prune} == expected, (keep_days, keep_last)


def test_unfinished_locked_and_undated_runs_are_never_pruned():
    runs = [state("stopped", 2, "stopped"), state("failed", 90, "failed"), state("busy", 90, locked=True),
            state("undated", None), state("gone", 90, size=None)]  # fmt: skip
    decisions = plan_prune(runs, best_run=None, now=NOW, keep_days=7, keep_last=0)
    reasons = {d.run.run_name: d.reason for d in decisions}
    assert not any(d.prune for d in decisions) and "gone" not in reasons  # no last.pth: nothing to decide
    assert "may be resumed" in reasons["stopped"] and "only finished runs are pruned" in reasons["failed"]
    assert "run.lock" in reasons["busy"] and "no end time" in reasons["undated"]


def test_times_without_an_offset_are_local_and_garbage_is_unknown():
    assert parse_time("2026-06-01T12:00:00+00:00") == NOW
    assert parse_time("2026-06-01T12:00:00") == datetime(2026, 6, 1, 12).astimezone()
    assert parse_time("yesterday") is None and parse_time(None) is None


def make_run(root: Path, name: str) -> Path:
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "best.pth").write_bytes(b"weights" * 1000)
    (run / "eval" / "roc.png").write_bytes(b"png")
    (run / "run.lock").write_text("{}")  # who wrote it, not what it wrote
    (run / ".last.pth.tmp.host.1.0badc0de").write_bytes(b"half")
    return run


@pytest.mark.parametrize("fmt", ["gz", "zst"])
def test_archive_holds_every_file_but_locks_and_temps(tmp_path, fmt):
    # The dev extra installs zstandard (the archive extra): a missing one is a broken install, not a skip.
    assert fmt in archive.available_formats(), "pip install -e '.[dev]' (zstandard)"
    runs = {"a": make_run(tmp_path, "a"), "sweep/0_lr=1": make_run(tmp_path / "sweep", "0_lr=1")}
    path = tmp_path / "out" / f"runs{archive.SUFFIXES[fmt]}"
    packed = archive.write_archive(path, runs, fmt)
    assert sorted(packed) == ["a/best.pth", "a/eval", "a/eval/roc.png",
                              "sweep/0_lr=1/best.pth", "sweep/0_lr=1/eval", "sweep/0_lr=1/eval/roc.png"]  # fmt: skip
    assert archive._listing(path, fmt) == packed
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp left beside it


def test_an_archive_that_reads_back_wrong_is_never_named(tmp_path, monkeypatch):
    runs = {"a": make_run(tmp_path, "a")}
    monkeypatch.setattr(archive, "_listing", lambda path, fmt: {})
    with pytest.raises(ArchiveError, match="nothing was removed"):
        archive.write_archive(tmp_path / "out" / "runs.tar.gz", runs, "gz")
    assert list((tmp_path / "out").iterdir()) == []


def test_zst_is_offered_only_with_zstandard(monkeypatch):
    monkeypatch.setattr(archive, "find_spec", lambda name: None)
    assert archive.available_formats() == ["gz"]


def test_gz_archive_opens_with_plain_tarfile(tmp_path):
    path = tmp_path / "runs.tar.gz"
    archive.write_archive(path, {"a": make_run(tmp_path, "a")}, "gz")
    with tarfile.open(path) as tar:
        assert tar.extractfile("a/best.pth").read() == b"weights" * 1000
