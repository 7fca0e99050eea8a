"""A fair global best: every candidate is judged on the same images (the promotion set).

The session-by-session workflow gives each batch its own validation slice. Here batch 1's run
learns, and its slice holds the validation images its recipe finds hardest; batch 2's run learns
nothing (learning rate 0), and its slice holds the images its untrained model happens to rank best.
By slice scores batch 2 looks better; on the common promotion set batch 1 is far better.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CONF_DIR, run_main
from helpers import TINY_DATA, error_lines, registry
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from sklearn.metrics import roc_auc_score

from deepfake.data.csv_dataset import CsvImageDataset
from deepfake.data.transforms import build_eval_transform
from deepfake.engine.evaluate import predict
from deepfake.models import detector_from_checkpoint

pytestmark = pytest.mark.slow

COMMON = [
    "backbone=timm", "backbone.name=test_resnet", "dataset.img_size=32", "dataset.batch_size=8",
    "dataset.num_workers=0", "logger=none", "deterministic=true", "train.do_test=false",
]  # fmt: skip
TINY_SETS = ["dataset.generate.n_train=64", "dataset.generate.n_valid=32", "dataset.generate.n_test=32"]
# One epoch each, so a reference run of the same recipe is the run itself, bit for bit (with more,
# the epoch kept as best would depend on the slice). The recipes differ only in their training data:
# batch 1 trains on all 64 images, batch 2 on 8.
RECIPE = ["phase.head_epochs=0", "phase.finetune_epochs=1", "phase.warmup_epochs=0", "phase.lr_backbone=3e-3",
          "phase.lr_head=3e-3"]  # fmt: skip
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def latest_run(root: Path) -> Path:
    return sorted((root / "outputs" / "train").iterdir())[-1]


def p_fake(checkpoint: Path, csv: Path, root_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    model = detector_from_checkpoint(torch.load(checkpoint, weights_only=True))
    pre = model.preprocess
    transform = build_eval_transform(
        pre["img_size"], mean=pre["mean"], std=pre["std"], interpolation=pre["interpolation"]
    )
    loader = torch.utils.data.DataLoader(CsvImageDataset(csv, root_dir, transform), batch_size=64)
    out = predict(model, loader, torch.device("cpu"))
    return out.probs, out.targets


def slice_rows(probs: np.ndarray, targets: np.ndarray, candidates: np.ndarray, *, easy: bool, n: int = 6) -> np.ndarray:
    """``n`` reals and ``n`` fakes among ``candidates`` that a model ranks best (easy) or worst (hard)."""
    reals, fakes = candidates[targets[candidates] == 0], candidates[targets[candidates] == 1]
    sign = 1 if easy else -1
    return np.sort(
        np.concatenate([reals[np.argsort(sign * probs[reals])][:n], fakes[np.argsort(-sign * probs[fakes])][:n]])
    )


@pytest.fixture(scope="module")
def two_batches(tmp_path_factory, shared_data_dir):
    """Batch 1 trains on the full train split and validates on the images its recipe finds hardest;
    batch 2 trains on 8 images and validates on those its recipe happens to rank best: each slice
    found with a reference run of the same recipe, which deterministic CPU training reproduces."""
    synthetic = shared_data_dir / "synthetic" / TINY_DATA
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        generate = compose("config", overrides=[f"paths.data_dir={shared_data_dir}", "dataset.img_size=32", *TINY_SETS])
    instantiate(generate.dataset.generate)  # the tiny set every test shares, made here if no test made it yet
    root_dir = synthetic / "real_vs_fake" / "real-vs-fake"
    scores = {}
    batches = tmp_path_factory.mktemp("batches")
    train = pd.read_csv(synthetic / "train.csv")
    few = pd.concat([train[train.label == 0].head(4), train[train.label == 1].head(4)])
    for name, rows in (("batch1", train), ("batch2", few)):
        (batches / name).mkdir()
        rows.to_csv(batches / name / "train.csv", index=False)
        shutil.copy(synthetic / "valid.csv", batches / name / "valid.csv")  # replaced below by the slices
    for name, k, recipe in (("learns", 1, RECIPE), ("weak", 2, RECIPE)):
        reference = tmp_path_factory.mktemp(f"reference_{name}")
        batch_run(reference, shared_data_dir, synthetic, batches, k, *recipe)
        scores[name] = p_fake(latest_run(reference) / "best.pth", synthetic / "valid.csv", root_dir)
    targets = scores["learns"][1].astype(int)
    hard = slice_rows(scores["learns"][0], targets, np.arange(len(targets)), easy=False)
    easy = slice_rows(scores["weak"][0], targets, np.setdiff1d(np.arange(len(targets)), hard), easy=True)
    valid = pd.read_csv(synthetic / "valid.csv")
    for name, rows in (("batch1", hard), ("batch2", easy)):
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
    batch_run(
        tmp_path, shared_data_dir, synthetic, batches, 1, *RECIPE, f"registry.promotion_csv={batches}/batch1/valid.csv"
    )
    first = latest_run(tmp_path)
    second_result = batch_run(tmp_path, shared_data_dir, synthetic, batches, 2, *RECIPE)
    second = latest_run(tmp_path)

    reg = registry(tmp_path)
    entries = {Path(e["run_dir"]): e for e in reg["runs"]}
    good, weak = entries[first], entries[second]
    assert good["best_val_auc"] < weak["best_val_auc"]  # the naive rule would promote the weak run
    assert reg["best_run"] == good["run_name"]  # the fair one keeps the run that learned

    # The incumbent was scored on another set, so it was re-scored on the candidate's set first.
    common_key = weak["promotion"]["set"]["key"]
    assert good["promotion"]["set"]["key"] != common_key
    assert weak["promotion"]["set"]["csv"] == str((synthetic / "valid.csv").resolve())
    rescored = good["rescored"][common_key]["auc"]
    assert rescored > weak["promotion"]["auc"]
    assert weak["promotion"]["incumbent"] == {"run_name": good["run_name"], "auc": rescored, "rescored": True}
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

    # The incumbent's run dir archived away: it is scored from best_model.pth, its own copy. Skipped as
    # unscorable, it was replaced by the weak run on a set it never saw.
    reordered = tmp_path / "valid_reordered.csv"  # another set: nothing scored on it yet
    pd.read_csv(synthetic / "valid.csv").iloc[::-1].to_csv(reordered, index=False)
    (first / "best.pth").rename(first / "best.pth.away")
    again = run_main(tmp_path, "task=registry", "registry.rescore=true", f"dataset.root={synthetic}",
                     f"registry.promotion_csv={reordered}", data_dir=shared_data_dir)  # fmt: skip
    assert f"{good['run_name']} stays the global best" in again.stdout + again.stderr
    assert registry(tmp_path)["best_run"] == good["run_name"]
    (first / "best.pth.away").rename(first / "best.pth")

    # A CSV from elsewhere, its paths not under registry.promotion_root_dir: it used to score black
    # images and promote whichever model liked black best.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(synthetic / "valid.csv", elsewhere / "valid.csv")
    best_before = (tmp_path / "models" / "best_model.pth").read_bytes()
    refused = run_main(tmp_path, "task=registry", "registry.rescore=true", f"dataset.root={synthetic}",
                       f"registry.promotion_csv={elsewhere / 'valid.csv'}", f"registry.promotion_root_dir={elsewhere}",
                       data_dir=shared_data_dir, check=False)  # fmt: skip
    errors = error_lines(refused)
    assert refused.returncode == 2 and len(errors) == 1, refused.stdout + refused.stderr
    assert "promotion set:" in errors[0] and f"registry.promotion_root_dir={elsewhere}" in errors[0], errors[0]
    assert (tmp_path / "models" / "best_model.pth").read_bytes() == best_before


def test_the_test_set_is_never_the_promotion_set(tmp_path, shared_data_dir, two_batches):
    synthetic, batches = two_batches
    result = batch_run(tmp_path, shared_data_dir, synthetic, batches, 2, *RECIPE,
                       f"registry.promotion_csv={synthetic}/test.csv", check=False)  # fmt: skip
    errors = error_lines(result)
    assert result.returncode == 2 and len(errors) == 1 and "holds the test images" in errors[0], result.stderr
    assert not (latest_run(tmp_path) / "metrics_log.csv").exists()  # refused before any training


def test_best_val_auc_stands_for_the_promotion_score_only_when_best_pth_was_validated_on_that_set(
    monkeypatch, tmp_path
):
    """A run stopped at 32 px and resumed at dataset.img_size=48 validated on the 48 px set, the promotion
    set; its best.pth (and best_val_auc) came from before the resume, measured on the 32 px set, which
    was registered as best.pth's promotion score. best.pth records the images it was validated on."""
    from deepfake.tasks import promotion
    from deepfake.tracking.checkpoint import CHECKPOINT_FORMAT, atomic_save

    identity = {"csv": str(tmp_path / "valid.csv"), "rows": 32, "images_sha256": "48" * 32, "key": "48" * 8}
    chosen = promotion.PromotionSet(tmp_path / "valid.csv", tmp_path, identity)
    rescored = []
    monkeypatch.setattr(promotion, "score_checkpoint", lambda path, cfg, chosen: rescored.append(path) or 0.25)
    best = tmp_path / "best.pth"
    for validated_on, auc in (("48" * 32, 0.9), ("32" * 32, 0.25), (None, 0.25)):  # None: an older best.pth
        atomic_save({"format": CHECKPOINT_FORMAT, "validated_on": validated_on}, best)
        assert promotion.candidate_promotion(None, best, 0.9, chosen) == {"auc": auc, "set": identity}
    assert rescored == [best, best]  # best.pth scored on the promotion set only where it was not validated there
