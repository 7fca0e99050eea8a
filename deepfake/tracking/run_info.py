"""What a run needs to be reproduced later: the code version and the installed packages."""

from __future__ import annotations

import os
import re
import subprocess
from importlib import metadata
from pathlib import Path

from deepfake.tracking.checkpoint import atomic_write_text

# git answers in milliseconds; the bound only matters on a hung network filesystem, where a run
# should start without its git record rather than wait.
_GIT_TIMEOUT_S = 10.0


def _git(repo_dir: Path, *args: str) -> str | None:
    try:
        completed = subprocess.run(
            ["git", *args],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):  # no git installed, repo_dir missing, hung
        return None
    return completed.stdout if completed.returncode == 0 else None


# The source tree of the code that runs: the repository for an editable install (site-packages, which
# git knows nothing of, for a wheel). Not paths.root_dir: that is where data and outputs go, which
# tests and users move anywhere (provenance read "unknown"), possibly into another repository.
CODE_DIR = Path(__file__).resolve().parents[2]


def git_info(repo_dir: str | os.PathLike[str]) -> dict[str, str | bool | None]:
    """``{"commit": hash, "dirty": bool}``; both None when git or the repository is unavailable."""
    folder = Path(repo_dir)
    commit = _git(folder, "rev-parse", "HEAD")
    status = _git(folder, "status", "--porcelain")
    return {
        "commit": commit.strip() if commit else None,
        "dirty": bool(status.strip()) if status is not None else None,
    }


def installed_requirements() -> list[str]:
    """``name==version`` of every installed distribution, sorted by name; when a package
    is installed twice, the copy first on sys.path (the one imported) wins."""
    pins: dict[str, str] = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:  # a broken install can lack metadata
            pins.setdefault(re.sub(r"[-_.]+", "-", name).lower(), f"{name}=={distribution.version}")
    return [pins[key] for key in sorted(pins)]


def write_run_info(run_dir: str | os.PathLike[str], repo_dir: str | os.PathLike[str]) -> dict[str, str | bool | None]:
    """Write ``git.txt`` and ``requirements.txt`` into ``run_dir``; return the git info."""
    folder = Path(run_dir)
    info = git_info(repo_dir)
    commit = info["commit"] or "unknown"
    dirty = "unknown" if info["dirty"] is None else str(info["dirty"]).lower()
    atomic_write_text(folder / "git.txt", f"commit {commit}\ndirty {dirty}\n")
    atomic_write_text(folder / "requirements.txt", "\n".join(installed_requirements()) + "\n")
    return info
