"""Run metadata: git state and installed packages (deepfake.tracking.run_info)."""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from deepfake.tracking import run_info
from deepfake.tracking.run_info import git_info, installed_requirements, write_run_info


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args]
    return subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Keep git from finding a repository above tmp_path.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    folder = tmp_path / "repo"
    folder.mkdir()
    _git(folder, "init", "-q")
    (folder / "train.py").write_text("print('v1')\n")
    _git(folder, "add", "train.py")
    _git(folder, "commit", "-q", "-m", "first")
    return folder


def test_clean_then_dirty_repository(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD").strip()
    assert git_info(repo) == {"commit": head, "dirty": False}

    (repo / "train.py").write_text("print('v2')\n")
    assert git_info(repo) == {"commit": head, "dirty": True}


def test_outside_a_repository_or_without_git(tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_info(plain) == {"commit": None, "dirty": None}
    assert git_info(tmp_path / "missing") == {"commit": None, "dirty": None}

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert git_info(repo) == {"commit": None, "dirty": None}


def test_requirements_pin_installed_distributions() -> None:
    pins = installed_requirements()
    assert f"torch=={metadata.version('torch')}" in pins
    assert f"filelock=={metadata.version('filelock')}" in pins
    names = [re.sub(r"[-_.]+", "-", pin.split("==")[0]).lower() for pin in pins]
    assert names == sorted(names) and len(names) == len(set(names))


def test_write_run_info_files(tmp_path: Path, repo: Path) -> None:
    run_dir = tmp_path / "outputs" / "run"
    head = _git(repo, "rev-parse", "HEAD").strip()

    info = write_run_info(run_dir, repo)

    assert info == {"commit": head, "dirty": False}
    assert (run_dir / "git.txt").read_text() == f"commit {head}\ndirty false\n"
    requirements = (run_dir / "requirements.txt").read_text().splitlines()
    assert requirements == installed_requirements()


def test_write_run_info_without_git_records_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_info, "_git", lambda repo_dir, *args: None)
    write_run_info(tmp_path, tmp_path)
    assert (tmp_path / "git.txt").read_text() == "commit unknown\ndirty unknown\n"
