"""A fair global best: every candidate is judged on the same images (the promotion set).

The session-by-session workflow gives each batch its own validation slice. Here batch 1's slice
holds the validation images its recipe finds hardest (found with a reference run of the same recipe,
deterministic on CPU) and batch 2's run learns nothing (learning rates 0) on an ordinary slice: by
slice scores batch 2 looks better, on the common promotion set batch 1 is far better.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import run_main
from deepfake.data.csv_dataset import CsvImageDataset
from deepfake.data.transforms import build_eval_transform
from deepfake.engine.evaluate import predict
from deepfake.models import detector_from_checkpoint

pytestmark = pytest.mark.slow

COMMON = [
    "backbone=timm", "backbone.name=test_resnet", "dataset.img_size=32", "dataset.batch_size=16",
    "dataset.num_workers=0", "logger=none", "deterministic=true", "train.do_test=false",
]  # fmt: skip
LEARNS = ["phase.head_epochs=1", "phase.finetune_epochs=4", "phase.warmup_epochs=0"]
LEARNS_NOTHING = ["phase.head_epochs=1", "phase.finetune_epochs=0", "phase.lr_head=0"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def registry(root: Path) -> dict:
    return json.loads((root / "models" / "model_metadata.json").read_text())


def latest_run(root: Path) -> Path:
    return sorted((root / "outputs" / "train").iterdir())[-1]


def p_fake(checkpoint: Path, csv: Path, root_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    model = detector_from_checkpoint(torch.load(checkpoint, weights_only=True))
    pre = model.preprocess
    transform = build_eval_transform(pre["img_size"], mean=pre["mean"], std=pre["std"], interpolation=pre["interpolation"])
    loader = torch.utils.data.DataLoader(CsvImageDataset(csv, root_dir, transform), batch_size=64)
    out = predict(model, loader, torch.device("cpu"))
    return out.probs, out.targets


@pytest.fixture(scope="module")
def two_batches(tmp_path_factory, shared_data_dir):
    """batch1: full train split, the slice of validation images hardest for its recipe; batch2: an ordinary slice."""
    reference = tmp_path_factory.mktemp("reference")
    run_main(reference, *COMMON, *LEARNS, data_dir=shared_data_dir, env=ONE_THREAD)
    synthetic = shared_data_dir / "synthetic"
    root_dir = synthetic / "real_vs_fake" / "real-vs-fake"
    probs, targets = p_fake(latest_run(reference) / "best.pth", synthetic / "valid.csv", root_dir)
    valid = pd.read_csv(synthetic / "valid.csv")
    reals, fakes = np.flatnonzero(targets == 0), np.flatnonzero(targets == 1)
    # The reals it finds most fake and the fakes it finds most real: the slice ranks them backwards.
    hard = np.concatenate([reals[np.argsort(-probs[reals])][:6], fakes[np.argsort(probs[fakes])][:6]])
    ordinary = np.setdiff1d(np.arange(len(valid)), hard)
    batches = tmp_path_factory.mktemp("batches")
    for name, rows in (("batch1", np.sort(hard)), ("batch2", ordinary)):
        (batches / name).mkdir()
        shutil.copy(synthetic / "train.csv", batches / name / "train.csv")
        valid.iloc[rows].to_csv(batches / name / "valid.csv", index=False)
    return synthetic, batches


def batch_run(root: Path, data: Path, synthetic: Path, batches: Path, k: int, *overrides: str, check: bool = True):
    return run_main(
        root, *COMMON, "dataset=batch", f"dataset.batch={k}", f"dataset.root={synthetic}",
        f"dataset.batches_dir={batches}", *overrides, data_dir=data, env=ONE_THREAD, check=check,
    )  # fmt: skip


def test_the_better_model_on_the_common_set_wins(tmp_path, shared_data_dir, two_batches):
    synthetic, batches = two_batches
    # Batch 1's run, registered as an older registry would have it: scored on its own slice only.
    batch_run(tmp_path, shared_data_dir, synthetic, batches, 1, *LEARNS, f"registry.promotion_csv={batches}/batch1/valid.csv")
    first = latest_run(tmp_path)
    second_result = batch_run(tmp_path, shared_data_dir, synthetic, batches, 2, *LEARNS_NOTHING)
    second = latest_run(tmp_path)

    reg = registry(tmp_path)
    entries = {Path(e["run_dir"]): e for e in reg["runs"]}
    good, idle = entries[first], entries[second]
    assert good["best_val_auc"] < idle["best_val_auc"]  # the naive rule would promote the idle run
    assert reg["best_run"] == good["run_name"]  # the fair one keeps the run that learned

    # The incumbent was scored on another set, so it was re-scored on the candidate's set first.
    common_key = idle["promotion"]["set"]["key"]
    assert good["promotion"]["set"]["key"] != common_key
    assert idle["promotion"]["set"]["csv"] == str((synthetic / "valid.csv").resolve())
    rescored = good["rescored"][common_key]["auc"]
    assert rescored > idle["promotion"]["auc"]
    assert idle["promotion"]["incumbent"] == {"run_name": good["run_name"], "auc": rescored, "rescored": True}
    log = (second / "run.log").read_text()
    assert f"re-scored the incumbent {good['run_name']} on valid.csv" in log and "kept" in log
    # The re-scored figure is the incumbent's true AUC on the common set.
    probs, targets = p_fake(tmp_path / "models" / "best_model.pth", synthetic / "valid.csv",
                            synthetic / "real_vs_fake" / "real-vs-fake")  # fmt: skip
    assert rescored == pytest.approx(roc_auc_score(targets, probs), abs=1e-6)
    assert "promoted" not in second_result.stdout.split("registry")[-1]

    # After the fact: re-score every run on one set and show the fair ranking.
    listing = run_main(tmp_path, "task=registry", "registry.rescore=true", f"dataset.root={synthetic}",
                       data_dir=shared_data_dir)  # fmt: skip
    assert f"{good['run_name']} stays the global best" in listing.stdout + listing.stderr
    assert "≠" not in listing.stdout


def test_the_test_set_is_never_the_promotion_set(tmp_path, shared_data_dir, two_batches):
    synthetic, batches = two_batches
    result = batch_run(tmp_path, shared_data_dir, synthetic, batches, 2, *LEARNS_NOTHING,
                       f"registry.promotion_csv={synthetic}/test.csv", check=False)  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert result.returncode == 2 and len(errors) == 1 and "holds the test images" in errors[0], result.stderr
    assert not (latest_run(tmp_path) / "metrics_log.csv").exists()  # refused before any training
