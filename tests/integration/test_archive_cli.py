"""task=archive refusals that need no trained model: a registry entry and a run dir with a few files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_main
from helpers import error_lines, registry


def registered_run(root: Path, name: str = "r") -> Path:
    run_dir = root / "outputs" / "train" / name
    run_dir.mkdir(parents=True)
    (run_dir / "best.pth").write_bytes(b"weights")
    (run_dir / "status.json").write_text(json.dumps({"status": "finished"}))
    entry = {"run_name": name, "run_dir": str(run_dir), "status": "finished", "ended_at": "2026-01-01T00:00:00+00:00"}
    (root / "models").mkdir()
    (root / "models" / "model_metadata.json").write_text(json.dumps({"version": 1, "best_run": None, "runs": [entry]}))
    return run_dir


@pytest.mark.parametrize(("inside", "remove"), [("arch", "true"), ("", "true"), ("arch/deeper", "false")])
def test_archive_dir_inside_a_chosen_run_dir_is_refused_before_anything_is_written(tmp_path, inside, remove):
    """remove=true deleted the run dir with the archive just written in it, then a traceback; the
    registry named an archive that no longer existed."""
    run_dir = registered_run(tmp_path)
    before = registry(tmp_path)
    result = run_main(tmp_path, "task=archive", f"archive.runs=[{run_dir}]", f"archive.dir={run_dir / inside}",
                      f"archive.remove={remove}", check=False)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = error_lines(result)
    assert f"is inside the run dir of r ({run_dir})" in line and "outside the run dirs" in line
    assert sorted(path.name for path in run_dir.iterdir()) == ["best.pth", "status.json"]
    assert registry(tmp_path) == before


def test_archive_dir_beside_the_run_dirs_is_taken(tmp_path):
    run_dir = registered_run(tmp_path)
    run_main(tmp_path, "task=archive", "archive.runs=[r]", f"archive.dir={run_dir.parent}", "archive.remove=true")
    [archive] = run_dir.parent.glob("runs_*.tar.gz")
    assert not run_dir.exists() and registry(tmp_path)["runs"][0]["archived"]["path"] == str(archive)


@pytest.mark.parametrize(("value", "shown"), [("null", "null"), ("", "")])
def test_an_archive_dir_naming_no_folder_is_refused_before_anything_is_written(tmp_path, value, shown):
    """null was a TypeError traceback; empty wrote the archive into the working directory (the project
    checkout) and recorded it there."""
    run_dir = registered_run(tmp_path)
    before = registry(tmp_path)
    result = run_main(tmp_path, "task=archive", "archive.runs=[r]", f"archive.dir={value}", "archive.remove=true",
                      check=False)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert error_lines(result) == [
        f"ERROR archive.dir={shown} names no folder; give the folder to write the archive in, or leave archive.dir "
        "out for paths.root_dir/archive"
    ]
    assert sorted(path.name for path in run_dir.iterdir()) == ["best.pth", "status.json"]
    assert registry(tmp_path) == before and not list(tmp_path.rglob("runs_*"))
