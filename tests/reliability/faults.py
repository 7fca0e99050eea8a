"""Helpers for the fault-injection tests: scripts/main.py runs that can be killed at chosen points.

Every run here is deterministic on CPU with one thread (OMP_NUM_THREADS=1): a killed and resumed
run must reproduce the uninterrupted one bit for bit, and the thread count must not differ between
the two. One thread each also lets two runs share the two cores.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import forked_cli
import torch

MAIN = Path(__file__).resolve().parents[2] / "scripts" / "main.py"

# test_resnet at 32 px, 64 training images in batches of 4: 3 epochs (1 head + 2 fine-tuning) of 16 steps,
# about a second of training in all: small batches leave room to land a signal inside an epoch.
RELIABLE = [
    "backbone=timm",
    "backbone.name=test_resnet",
    "dataset.img_size=32",
    "dataset.batch_size=4",
    "dataset.generate.n_train=64",
    "dataset.generate.n_valid=32",
    "dataset.generate.n_test=32",
    "phase.head_epochs=1",
    "phase.finetune_epochs=2",
    "phase.warmup_epochs=0.5",
    "logger=none",
    "deterministic=true",
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def main_args(root: Path, data_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(MAIN), f"paths.root_dir={root}", f"paths.data_dir={data_dir}", *overrides]


def run(root: Path, data_dir: Path, *overrides: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return forked_cli.run(main_args(root, data_dir, *overrides)[2:], root, ENV, timeout)


def start(root: Path, data_dir: Path, *overrides: str) -> forked_cli.ForkedRun | subprocess.Popen:
    """The run in its own process, to be signalled or waited on like a Popen."""
    return forked_cli.start(main_args(root, data_dir, *overrides)[2:], root, ENV)


def run_dir_of(root: Path) -> Path | None:
    runs = sorted((root / "outputs" / "train").glob("*")) if (root / "outputs" / "train").is_dir() else []
    return runs[-1] if runs else None


def csv_rows(run_dir: Path) -> int:
    path = run_dir / "metrics_log.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


def wait_for(proc: subprocess.Popen, root: Path, condition, timeout: float = 120.0) -> Path | None:
    """Poll until ``condition(run_dir)`` holds; None when the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run_dir = run_dir_of(root)
        if run_dir is not None and condition(run_dir):
            return run_dir
        if proc.poll() is not None:
            return None
        time.sleep(0.02)
    raise AssertionError("the run never reached the kill point")


def kill(proc: subprocess.Popen, signum: int = signal.SIGKILL) -> tuple[int, str, str]:
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def metric_rows(run_dir: Path) -> list[dict]:
    """metrics_log.csv without its timings."""
    rows = list(csv.DictReader((run_dir / "metrics_log.csv").open()))
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def bitwise_equal(a: Path, b: Path) -> bool:
    left, right = model_tensors(a), model_tensors(b)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
