"""task=bench as a user runs it: every figure measured, the ratios from them, the machine described."""

from __future__ import annotations

import json
import statistics

import pytest

pytestmark = pytest.mark.slow


def test_bench_measures_each_stage_and_writes_the_ratios(tmp_path, main_runner):
    main_runner("task=bench", "bench.repeats=2", "bench.warmup=0", "bench.steps=2", "bench.forward_batches=2",
                "bench.epochs=3", "bench.cache=all", f"dataset.cache_dir={tmp_path / 'cache'}",
                # The device-side path on the CPU: the trainer decodes, crops and flips each batch itself,
                # and with the cache (d') sends cached pixels instead of JPEG bytes.
                "dataset.decode=cuda", "augment.crop_scale=[0.8,1.0]")  # fmt: skip
    [run] = list((tmp_path / "outputs" / "bench").iterdir())
    report = json.loads((run / "bench.json").read_text())
    figures = report["figures"]
    assert set(figures) == {"bare_train_step", "bare_forward", "loader", "train_pipeline", "eval_pipeline",
                            "eval_cached", "loader_cached", "switches"}  # fmt: skip
    switches = figures.pop("switches")
    assert set(switches["optimizer_step_s"]) == {"fused", "per_tensor"}
    assert set(switches["checkpoint_cost_s"]) == {"background", "synchronous"}  # (save + steps) - steps: any sign
    assert min(switches["optimizer_step_s"].values()) > 0 and switches["steps_alone_s"] > 0
    assert switches["checkpoint_mib"] > 0 and not any((run / "switches").iterdir())  # its files removed
    for name, figure in figures.items():
        assert figure["images_per_s"] > 0, name
    assert len(figures["bare_train_step"]["repeats"]) == 2
    train = figures["train_pipeline"]
    assert len(train["repeats"]) == len(train["bare_step_inside_each"]) == 2  # 3 epochs, the first the warm-up
    assert 0 < train["validation_s"] < train["warmup_s"]  # timed apart: (c) is the scoring figure
    assert len(figures["eval_pipeline"]["repeats"]) == len(figures["bare_forward"]["repeats"]) == 2
    # Each ratio is the median over repeats of the pipeline's rate over the bare rate taken beside it.
    ratios = report["ratios"]
    assert ratios["train_pipeline_over_bare_step"] == pytest.approx(
        statistics.median(p / b for p, b in zip(train["repeats"], train["bare_step_inside_each"])), abs=2e-3)  # fmt: skip
    assert ratios["eval_pipeline_over_bare_forward"] == pytest.approx(statistics.median(
        p / b for p, b in zip(figures["eval_pipeline"]["repeats"], figures["bare_forward"]["repeats"])), abs=2e-3)  # fmt: skip
    assert ratios["cache_gain_eval"] == round(
        figures["eval_cached"]["images_per_s"] / figures["eval_pipeline"]["images_per_s"], 3)  # fmt: skip
    assert ratios["cache_gain_loader"] == round(
        figures["loader_cached"]["images_per_s"] / figures["loader"]["images_per_s"], 3
    )
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir() if p.is_dir()) == ["train", "valid"]
    assert figures["train_pipeline"]["peak_rss_mib"] > 50  # torch alone takes more than that
    assert report["settings"] == {**report["settings"], "backbone": "test_resnet", "img_size": 32, "batch_size": 16,
                                  "train_images": 64, "val_images": 32, "decode": "cuda", "cache": "all",
                                  "fused_optimizer": True, "background_checkpoints": True}  # fmt: skip
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]
    assert (run / "pipeline" / "last.pth").is_file()  # the pipeline wrote its checkpoints like a run


def test_a_single_epoch_bench_is_refused(tmp_path, main_runner):
    result = main_runner("task=bench", "bench.epochs=1", check=False)
    assert result.returncode == 2 and "bench.epochs=1" in result.stderr
