"""What a run's records say its figures and weights came from: the checkpoint each test report measured
(by sha256) and the run and checkpoint ``init_from=best`` loaded, in the registry, run.log and card."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from helpers import registry

from deepfake.tracking.checkpoint import atomic_save

pytestmark = pytest.mark.slow  # two trainings and a card: ~50 s on 2 cores


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_session_from_the_global_best_names_its_source_and_its_test_names_its_checkpoint(tmp_path, main_runner):
    main_runner("name=first")
    first = next((tmp_path / "outputs" / "train").glob("*_first"))
    main_runner("name=second", "init_from=best")
    second = next((tmp_path / "outputs" / "train").glob("*_second"))
    source = {"checkpoint": str(tmp_path / "models" / "best_model.pth"), "run_name": first.name,
              "epoch": torch.load(first / "best.pth", weights_only=True)["epoch"],
              "sha256": sha256_of(first / "best.pth")}  # fmt: skip

    # init_from=best: the run it loaded, not the word "best", whose file a promotion replaces.
    entry = next(e for e in registry(tmp_path)["runs"] if e["run_name"] == second.name)
    assert entry["initialised_from"] == source
    assert torch.load(second / "best.pth", weights_only=True)["initialised_from"] == source
    said = f"{source['checkpoint']} (run {first.name}, epoch {source['epoch']}, sha256 {source['sha256']})"
    assert f"initialised the model from {said}" in (second / "run.log").read_text()
    card = (second / "model_card.md").read_text()
    assert f"| initial weights | from scratch, then initialised from {said} |" in card

    # The test report, the registry's figures and the entry name the best.pth they measured.
    tested = sha256_of(second / "best.pth")
    assert json.loads((second / "metrics_test.json").read_text())["checkpoint_sha256"] == tested
    assert entry["test_metrics"]["checkpoint_sha256"] == entry["checkpoint_sha256"] == tested
    assert "### Test (" in card

    # A copy of an earlier epoch's best.pth of that run: carded beside itself, without the run's figures.
    early = torch.load(second / "best.pth", weights_only=True)
    early.update(epoch=1, threshold=None, threshold_policy=None, operating_point=None)
    copy = tmp_path / "cp" / "early.pth"
    copy.parent.mkdir()
    atomic_save(early, copy)
    main_runner("task=card", f"ckpt={copy}", tiny=False)
    early_card = (tmp_path / "cp" / "early.model_card.md").read_text()
    assert f"Not evaluated on this checkpoint (its run's test report is of another checkpoint, sha256 {tested})." in (
        early_card
    )
    assert "### Test (" not in early_card

    # task=test of another checkpoint with the run's name and a threshold of its own: not the run's figures.
    other = {**early, "threshold": 0.5, "threshold_policy": "fixed"}
    atomic_save(other, tmp_path / "cp" / "other.pth")
    figures = registry(tmp_path)["runs"]
    main_runner("task=test", f"ckpt={tmp_path / 'cp' / 'other.pth'}", "eval.report=false", "eval.bootstrap=0")
    assert registry(tmp_path)["runs"] == figures

    # task=cam of it: its CAM figures are not the run's either (the card shows the registry's as best.pth's).
    main_runner("task=cam", f"ckpt={tmp_path / 'cp' / 'other.pth'}")
    assert registry(tmp_path)["runs"] == figures
    (report,) = (tmp_path / "outputs").glob("cam/*/cam/metrics.json")
    assert json.loads(report.read_text())["checkpoint_sha256"] == sha256_of(tmp_path / "cp" / "other.pth")
