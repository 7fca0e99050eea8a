"""Helpers the test modules share: the one folder a command made, the registry as written, and the
lines of a user's mistake."""

from __future__ import annotations

import csv
import json
from pathlib import Path

# The folder the tiny tests' generated data lands in under data/synthetic/ (32 px, 64/32/32 images:
# conftest.TINY, faults.RELIABLE), as deepfake.tasks.resolvers.synthetic_folder names it.
TINY_DATA = "32px-n64-32-32"


def only_dir(parent: Path) -> Path:
    """The single folder under ``parent`` (a task's one run dir)."""
    children = [path for path in parent.iterdir() if path.is_dir()]
    assert len(children) == 1, children
    return children[0]


def registry(root: Path) -> dict:
    """``<root>/models/model_metadata.json`` as written; no runs when there is none."""
    path = root / "models" / "model_metadata.json"
    return json.loads(path.read_text()) if path.is_file() else {"runs": []}


def error_lines(result) -> list[str]:
    """The lines in the one format of a user's mistake, ``ERROR <what>; <what to do>``, and only those
    (a log line with [ERROR] in it is not one)."""
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("ERROR ")]


# Sweeps (tests/integration/test_sweeps.py, tests/reliability/test_killed_sweep_jobs.py).
def only_sweep_dir(root: Path) -> Path:
    [sweep_dir] = [p for p in (root / "multirun").iterdir() if p.is_dir() and p.name != "optuna"]
    return sweep_dir


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The jobs' dirs in job order: each is named <job number>_<its overrides>."""
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit()),
                  key=lambda p: int(p.name.split("_")[0]))  # fmt: skip


def summary(sweep_dir: Path) -> list[dict]:
    return list(csv.DictReader((sweep_dir / "summary.csv").open()))


def assert_consistent_best(root: Path, n_jobs: int) -> None:
    """Distinct run dirs and entries per job, and the global best is the best job's checkpoint."""
    reg = registry(root)
    assert len(reg["runs"]) == n_jobs and len({e["run_dir"] for e in reg["runs"]}) == n_jobs
    best = max(reg["runs"], key=lambda e: e["best_val_auc"])
    assert reg["best_run"] == best["run_name"]
    assert (root / "models" / "best_model.pth").read_bytes() == (Path(best["run_dir"]) / "best.pth").read_bytes()
