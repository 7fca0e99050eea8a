"""One writer per run dir, and no compute lost to a bad registry, through scripts/main.py.

A second writer is refused, naming the first, while the first finishes exactly as an undisturbed run;
what a run writes at its end (registry, models dir) is tried before its first batch; a finished run
resumed changes no file; a synthetic dataset at a chosen root is replaced only when asked; a last.pth
whose optimizer state cannot be loaded resumes from its weights, or is refused under resume_strict.
(A SIGKILLed run's stale lock taken over: test_kill_and_resume.py.)
"""

from __future__ import annotations

import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import forked_cli
import pandas as pd
import pytest
import torch
from helpers import error_lines, registry

from deepfake.data.synthetic import generate_synthetic_dataset
from deepfake.tracking.checkpoint import HOST
from reliability.faults import (
    ENV,
    RELIABLE,
    bitwise_equal,
    csv_rows,
    kill,
    main_args,
    metric_rows,
    run,
    run_dir_of,
    start,
    wait_for,
)

pytestmark = pytest.mark.slow


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _sweep(root: Path, data_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return forked_cli.run(["-m", *main_args(root, data_dir, *overrides)[2:]], root, ENV, timeout=180)


def _log_has(run_dir: Path, text: str) -> bool:
    return (run_dir / "run.log").is_file() and text in (run_dir / "run.log").read_text()


def test_a_second_writer_is_refused_and_the_first_finishes_as_if_alone(tmp_path, reliable_data, uninterrupted):
    first = start(tmp_path, reliable_data, *RELIABLE)
    run_dir = wait_for(first, tmp_path, lambda d: (d / "run.lock").is_file() and _log_has(d, "phase head"))
    assert run_dir is not None, first.communicate()
    # Paused mid-run: as alive as a running process, and the others' attempts cannot race its end.
    first.send_signal(signal.SIGSTOP)
    try:
        before = _snapshot(run_dir)
        refused = [
            run(tmp_path, reliable_data, f"resume={run_dir}"),  # resume=<its dir> typed in a second terminal
            run(tmp_path, reliable_data, *RELIABLE, f"hydra.run.dir={run_dir}"),  # a new run pointed at it
        ]
        untouched = _snapshot(run_dir)
        # A sweep job landing in it (a relaunched sweep): Hydra writes its own files first, then the job ends.
        swept = _sweep(tmp_path, reliable_data, *RELIABLE, f"hydra.sweep.dir={run_dir.parent}",
                       f"hydra.sweep.subdir={run_dir.name}")  # fmt: skip
        after_sweep = _snapshot(run_dir)
        registry_meanwhile = registry(tmp_path)
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err

    for result in refused:
        lines = error_lines(result)
        assert result.returncode == 2 and len(lines) == 1, result.stdout + result.stderr
        assert f"{run_dir} is being written by PID {first.pid} on {HOST}, started " in lines[0]
        assert f"delete {run_dir / 'run.lock'}" in lines[0]
    assert untouched == before  # refused before Hydra opened the run dir
    assert swept.returncode == 2 and f"is being written by PID {first.pid}" in swept.stdout + swept.stderr, (
        swept.stdout + swept.stderr
    )
    changed = {name for name in after_sweep if after_sweep[name] != before.get(name)}
    assert changed <= {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "run.log"}, changed
    assert registry_meanwhile["runs"] == []  # the refused job registered nothing, not even as failed

    assert metric_rows(run_dir) == metric_rows(uninterrupted)  # each epoch once
    assert bitwise_equal(run_dir / "best.pth", uninterrupted / "best.pth")
    assert bitwise_equal(run_dir / "last.pth", uninterrupted / "last.pth")
    assert [entry["run_name"] for entry in registry(tmp_path)["runs"]] == [run_dir.name]
    assert not (run_dir / "run.lock").exists()


# Tests run as root, for whom a chmod'ed folder stays writable: a models dir under a file is one that
# nobody can write (a models dir that is itself a file: tests/unit/test_preflight_outputs.py).
def _end_faults(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """fault -> (overrides, what its one ERROR line must hold); each under its own root."""
    (root / "corrupt" / "models").mkdir(parents=True)
    (root / "corrupt" / "models" / "model_metadata.json").write_text('{"version": 1, "runs": [')
    (root / "unwritable").mkdir()
    (root / "unwritable" / "a_file").write_text("a file, not a folder")
    models = root / "unwritable" / "a_file" / "models"
    return {
        "corrupt": ([], [f"registry {root / 'corrupt' / 'models' / 'model_metadata.json'} is not valid JSON"]),
        "unwritable": ([f"paths.models_dir={models}"], ["cannot be written", "Not a directory", str(models),
                                                        "paths.models_dir"]),
    }  # fmt: skip


@pytest.fixture(scope="module")
def end_fault_runs(tmp_path_factory, reliable_data, uninterrupted):
    root = tmp_path_factory.mktemp("end_faults")
    faults = _end_faults(root)
    with ThreadPoolExecutor(max_workers=2) as pool:  # one thread per run, two cores
        futures = {name: pool.submit(run, root / name, reliable_data, *RELIABLE, *overrides)
                   for name, (overrides, _) in faults.items()}  # fmt: skip
        return {name: (futures[name].result(), faults[name][1], root / name) for name in faults}


@pytest.mark.parametrize("fault", ["corrupt", "unwritable"], ids=["corrupt registry", "models dir under a file"])
def test_what_the_run_writes_at_its_end_is_tried_before_its_first_batch(end_fault_runs, fault):
    result, expected, root = end_fault_runs[fault]
    lines = error_lines(result)
    assert result.returncode == 2 and len(lines) == 1, result.stdout + result.stderr
    assert all(text in lines[0] for text in expected), lines[0]
    run_dir = run_dir_of(root)
    log = (run_dir / "run.log").read_text()
    # Before the image scan, the first phase and any epoch: no compute spent.
    assert "checked" not in log and "phase head" not in log and "epoch 1" not in log, log
    assert not list(run_dir.glob("*.pth"))
    if fault == "corrupt":  # never overwritten, not even to record the failed run
        assert (root / "models" / "model_metadata.json").read_text() == '{"version": 1, "runs": ['


def test_resuming_a_finished_run_changes_no_file_and_do_test_reruns_only_the_test(
    tmp_path, reliable_data, uninterrupted
):
    assert run(tmp_path, reliable_data, *RELIABLE, "phase.finetune_epochs=0").returncode == 0
    run_dir = run_dir_of(tmp_path)
    [trained] = registry(tmp_path)["runs"]
    before = _snapshot(tmp_path)

    again = run(tmp_path, reliable_data, f"resume={run_dir}")
    assert again.returncode == 0, again.stderr
    assert (
        again.stdout.count("has already finished") == 1 and "nothing to train, test or register again" in again.stdout
    )
    assert _snapshot(tmp_path) == before

    retest = run(tmp_path, reliable_data, f"resume={run_dir}", "train.do_test=true")
    assert retest.returncode == 0, retest.stderr
    assert f"{run_dir} has already finished: re-running only its test" in retest.stdout
    assert _snapshot(run_dir) == {name[len(f"outputs/train/{run_dir.name}/"):]: value for name, value in before.items()
                                  if name.startswith(f"outputs/train/{run_dir.name}/")}  # fmt: skip
    [tested] = list((tmp_path / "outputs" / "test").glob("*/metrics_test.json"))
    [entry] = registry(tmp_path)["runs"]
    assert entry["test_metrics"]["evaluated_at"] == json.loads(tested.read_text())["evaluated_at"]
    assert {k: v for k, v in entry.items() if k != "test_metrics"} == {
        k: v for k, v in trained.items() if k != "test_metrics"
    }


def test_a_synthetic_dataset_at_a_chosen_root_is_replaced_only_when_asked(tmp_path, reliable_data):
    mine = tmp_path / "mine"
    generate_synthetic_dataset(mine, n_train=8, n_valid=4, n_test=4, image_size=32, seed=1)
    before = _snapshot(mine)
    short = [*RELIABLE, f"dataset.root={mine}", "phase.finetune_epochs=0", "train.do_test=false"]

    refused = run(tmp_path, reliable_data, *short)
    lines = error_lines(refused)
    assert refused.returncode == 2 and len(lines) == 1, refused.stdout + refused.stderr
    assert "(recorded -> requested: n_test 4 -> 32, n_train 8 -> 64, n_valid 4 -> 32, seed 1 -> 0)" in lines[0]
    assert "dataset.generate.overwrite=true" in lines[0]
    assert _snapshot(mine) == before

    replaced = run(tmp_path, reliable_data, *short, "dataset.generate.overwrite=true")
    assert replaced.returncode == 0, replaced.stderr
    assert len(pd.read_csv(mine / "train.csv")) == 64


def test_a_last_pth_whose_optimizer_state_cannot_be_loaded(tmp_path, reliable_data, uninterrupted):
    proc = start(tmp_path, reliable_data, *RELIABLE, "phase.finetune_epochs=3")
    run_dir = wait_for(proc, tmp_path, lambda d: csv_rows(d) >= 2)
    assert run_dir is not None, proc.communicate()
    status, out, err = kill(proc, signal.SIGTERM)  # lands inside fine-tuning epochs 2-3 of 3
    assert status == 128 + signal.SIGTERM, out + err
    last = torch.load(run_dir / "last.pth", weights_only=True)
    groups = last["optimizer"]["param_groups"]
    groups.append({**groups[0], "params": []})  # the model's param groups have changed since
    torch.save(last, run_dir / "last.pth")
    damaged = (run_dir / "last.pth").read_bytes()

    strict = run(tmp_path, reliable_data, f"resume={run_dir}", "resume_strict=true")
    lines = error_lines(strict)
    assert strict.returncode == 2 and len(lines) == 1, strict.stdout + strict.stderr
    assert "last.pth cannot be loaded" in lines[0] and "resume_strict=true refuses" in lines[0]
    assert (run_dir / "last.pth").read_bytes() == damaged

    # Typed again: a resume keeps the overrides of the launches before it, the refused one's included.
    lenient = run(tmp_path, reliable_data, f"resume={run_dir}", "resume_strict=false")
    assert lenient.returncode == 0, lenient.stderr
    log = (run_dir / "run.log").read_text().splitlines()
    warnings = [line for line in log if "[WARNING]" in line and "with a fresh optimizer" in line]
    assert len(warnings) == 1 and "no longer an exact continuation" in warnings[0]
    [entry] = registry(tmp_path)["runs"]
    assert entry["status"] == "finished" and entry["epochs"] == 4
    assert "last.pth cannot be loaded" in entry["inexact_resume"]
    assert [row["epoch"] for row in metric_rows(run_dir)] == ["1", "2", "3", "4"]
