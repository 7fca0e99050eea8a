"""task=bench's printed table names what each figure measured."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from deepfake.tasks import bench


def _printed(tmp_path, monkeypatch, *, from_cache: bool = False, **figures) -> str:
    out = io.StringIO()
    monkeypatch.setattr(bench, "console", Console(file=out, width=400))
    settings = {"backbone": "test_resnet", "img_size": 32, "batch_size": 8, "precision": "32", "device": "cpu",
                "train_from_cache": from_cache}  # fmt: skip
    figures = {"bare_train_step": {"images_per_s": 10.0, "repeats": [10.0]},
               "train_pipeline": {"images_per_s": 9.0, "repeats": [9.0], "validation_s": 0.1, "peak_rss_mib": 100},
               **figures}  # fmt: skip
    ratios = {"train_pipeline_over_bare_step": 0.9, "eval_pipeline_over_bare_forward": 0.9}
    bench._print({"settings": settings, "figures": figures, "ratios": ratios}, tmp_path)
    return out.getvalue()


@pytest.mark.parametrize(("from_cache", "label"), [(True, "(b) training from the decoded cache"),
                                                   (False, "(b) training from files")])  # fmt: skip
def test_the_training_row_says_whether_it_read_the_cache_or_the_files(tmp_path, monkeypatch, from_cache, label):
    printed = _printed(tmp_path, monkeypatch, from_cache=from_cache)
    assert label in printed and ("from files" in printed) != from_cache


def test_a_negative_checkpoint_cost_prints_as_within_noise_not_as_a_measured_cost(tmp_path, monkeypatch):
    """(save + steps) - (steps alone) below zero on a loaded machine is noise, not a saving."""
    switches = {"optimizer_step_s": {"fused": 0.001, "per_tensor": 0.002}, "steps_alone_s": 0.46,
                "checkpoint_cost_s": {"background": -0.136, "synchronous": 0.218}, "checkpoint_mib": 4.0}  # fmt: skip
    assert ("adds to 3 training steps (0.46 s): within noise (-0.136 s) in the background, 0.218 s written "
            "synchronously") in _printed(tmp_path, monkeypatch, switches=switches)  # fmt: skip
