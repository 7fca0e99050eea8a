"""task=compare as users type it: sweep jobs named unquoted, and a sweep that is not there."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from conftest import run_main
from helpers import error_lines

# A sweep job's run name: <sweep>/<its dir>, named by its overrides (a long one cut with a hash).
JOBS = ["fx/0_optimizer=sgd,phase.lr_backbone=0.001", "fx/1_optimizer=sgd,dataset.generate.n_tra-5790e46d"]


def _registry(root: Path, names: list[str]) -> None:
    runs = [{"run_name": name, "run_dir": str(root / "multirun" / name), "status": "finished", "backbone": "timm",
             "dataset": "synthetic", "best_val_auc": 0.5 + n / 10} for n, name in enumerate(names)]  # fmt: skip
    (root / "models").mkdir()
    (root / "models" / "model_metadata.json").write_text(json.dumps({"version": 1, "best_run": None, "runs": runs}))


def test_sweep_jobs_are_compared_as_task_registry_lists_them(tmp_path):
    """Hydra's grammar stops at the '=' of a job's name in a list: a parse error, exit 1, unless the
    user quoted each name."""
    _registry(tmp_path, [*JOBS, "2026-12-03_15-51-18_cd4d"])
    run_main(tmp_path, "task=compare", f"compare.runs=[{JOBS[1]},2026-12-03_15-51-18_cd4d,{JOBS[0]}]")
    [compared] = (tmp_path / "outputs" / "compare").glob("*/compare.csv")
    names = [row["run_name"] for row in csv.DictReader(compared.open())]
    assert names == [JOBS[1], "2026-12-03_15-51-18_cd4d", JOBS[0]]


def test_a_missing_sweep_is_named_by_the_setting_typed(tmp_path):
    refused = run_main(tmp_path, "task=compare", "compare.sweep=nonexist", check=False)
    assert refused.returncode == 2 and error_lines(refused) == [
        f"ERROR compare.sweep=nonexist: no such sweep dir (looked in {tmp_path / 'multirun'}); pass <stamp> (a folder "
        "there) or the sweep dir's path"
    ], refused.stdout + refused.stderr
