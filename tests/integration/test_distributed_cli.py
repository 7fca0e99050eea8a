"""scripts/main.py under torchrun, as a user launches it: two ranks on CPU (gloo) share one run dir,
rank 0 alone writes, validation equals one process scoring best.pth, and the checkpoint loads in a
plain task=test; a sweep under torchrun is refused."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MAIN, TINY, run_main
from torch.utils.data import DataLoader

from deepfake.data.csv_dataset import CsvImageDataset
from deepfake.data.transforms import build_eval_transform
from deepfake.engine.evaluate import predict
from deepfake.engine.metrics import auc_or_none
from deepfake.models import detector_from_checkpoint
from deepfake.tracking.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def torchrun(root: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """torchrun --standalone (a free port of its own) with two CPU ranks."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(MAIN),
               *[a for a in args if a.startswith("-")], f"paths.root_dir={root}", *[a for a in args if not a.startswith("-")]]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=root, check=False)


def test_two_ranks_share_one_run_dir_and_validate_like_one_process(tmp_path):
    # 30 validation images in batches of 8 on 2 ranks: shards of 15, not a multiple of 2 x 8.
    result = torchrun(tmp_path, *TINY, "dataset.batch_size=8", "dataset.generate.n_valid=30")
    assert result.returncode == 0, result.stdout + result.stderr
    runs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 1, runs  # both ranks composed the same run dir
    run = runs[0]
    assert {"run.log", "run.rank1.log", ".hydra", "best.pth", "last.pth", "metrics_test.json"} <= {
        p.name for p in run.iterdir()
    }
    rank0, rank1 = (run / "run.log").read_text(), (run / "run.rank1.log").read_text()
    assert "rank 0 of 2" in rank0 and "global batch 16" in rank0 and "test on 32 images" in rank0
    assert "rank 1 of 2" in rank1 and "operating point" not in rank1 and "test on" not in rank1
    entries = json.loads((tmp_path / "models" / "model_metadata.json").read_text())["runs"]
    assert len(entries) == 1 and entries[0]["world_size"] == 2 and entries[0]["status"] == "finished"

    # Validation: every image once, so the logged figures are those of one process scoring best.pth.
    rows = list(csv.DictReader((run / "metrics_log.csv").open()))
    best = load_checkpoint(run / "best.pth")
    row = next(r for r in rows if int(r["epoch"]) == best["epoch"])
    model = detector_from_checkpoint(best)
    preprocess = best["preprocess"]
    data_dir = tmp_path / "data" / "synthetic" / f"{preprocess['img_size']}px-n64-30-32"  # TINY with n_valid=30
    dataset = CsvImageDataset(
        data_dir / "valid.csv", data_dir / "real_vs_fake" / "real-vs-fake",
        build_eval_transform(preprocess["img_size"], mean=preprocess["mean"], std=preprocess["std"],
                             interpolation=preprocess["interpolation"]),
    )  # fmt: skip
    preds = predict(model, DataLoader(dataset, batch_size=32), torch.device("cpu"))
    assert len(preds.indices) == 30
    assert float(row["val_auc"]) == round(auc_or_none(preds.targets, preds.logits), 6)
    accuracy = ((preds.probs >= 0.5) == preds.targets.astype(bool)).mean()
    assert float(row["val_accuracy"]) == round(float(accuracy), 6)

    # The DDP run's checkpoint in one process, without torchrun.
    run_main(tmp_path, "task=test", f"ckpt={run}", *TINY, "dataset.generate.n_valid=30")
    tested = next((tmp_path / "outputs" / "test").iterdir())
    assert json.loads((tested / "metrics_test.json").read_text())["auc"] == pytest.approx(
        json.loads((run / "metrics_test.json").read_text())["auc"]
    )
    # task=test under torchrun runs on rank 0 alone, as one process would (it died in a broadcast that
    # rank 1, gone home, never joined).
    again = torchrun(tmp_path, "task=test", f"ckpt={run}", *TINY, "dataset.generate.n_valid=30")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(list((tmp_path / "outputs" / "test").iterdir())) == 2


def test_a_sweep_under_torchrun_is_refused(tmp_path):
    result = torchrun(tmp_path, "-m", "seed=1,2", timeout=120)
    assert result.returncode != 0
    assert "-m under torchrun would run the whole sweep once per rank" in result.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()


def test_a_sigterm_to_one_rank_stops_the_run_with_every_file_of_rank_0_written(tmp_path):
    """SLURM signals every process of a job; here rank 1 alone. Rank 1 exited at once with 143, and
    torchrun killed rank 0 in its last writes: status.json left running, run.lock behind, no curves."""
    import signal
    import time

    import psutil

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(MAIN),
               f"paths.root_dir={tmp_path}", *TINY, "dataset.batch_size=4", "phase.finetune_epochs=20"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not [
        log for log in tmp_path.glob("outputs/train/*/metrics_log.csv") if len(log.read_text().splitlines()) > 1
    ]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    [rank_1] = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    rank_1.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    [run] = (tmp_path / "outputs" / "train").iterdir()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "stopped" and status["exit_code"] == 143, (status, out + err)
    log = (run / "run.log").read_text()
    assert "SIGTERM: stopped after epoch" in log and "last.pth saved" in log, log
    # The hint names the processes to resume on: one process refused an epoch cut by two.
    assert f"resume with the same 2 processes: torchrun --nproc_per_node=2 scripts/main.py resume={run}" in log
    assert not (run / "run.lock").exists() and (run / "training_curves.png").is_file()
    assert (run / "last.pth").is_file()
