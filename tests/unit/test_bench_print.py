"""task=bench's printed table names what each figure measured."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from deepfake.tasks import bench


@pytest.mark.parametrize(("from_cache", "label"), [(True, "(b) training from the decoded cache"),
                                                   (False, "(b) training from files")])  # fmt: skip
def test_the_training_row_says_whether_it_read_the_cache_or_the_files(tmp_path, monkeypatch, from_cache, label):
    out = io.StringIO()
    monkeypatch.setattr(bench, "console", Console(file=out, width=200))
    settings = {"backbone": "test_resnet", "img_size": 32, "batch_size": 8, "precision": "32", "device": "cpu",
                "train_from_cache": from_cache}  # fmt: skip
    figures = {"bare_train_step": {"images_per_s": 10.0, "repeats": [10.0]},
               "train_pipeline": {"images_per_s": 9.0, "repeats": [9.0], "validation_s": 0.1, "peak_rss_mib": 100}}  # fmt: skip
    ratios = {"train_pipeline_over_bare_step": 0.9, "eval_pipeline_over_bare_forward": 0.9}
    bench._print({"settings": settings, "figures": figures, "ratios": ratios}, tmp_path)
    printed = out.getvalue()
    assert label in printed and ("from files" in printed) != from_cache
