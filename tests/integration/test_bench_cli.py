"""task=bench as a user runs it: every figure measured, the ratios from them, the machine described."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
from conftest import REPO, TINY

pytestmark = pytest.mark.slow


def test_bench_measures_each_stage_and_writes_the_ratios(tmp_path, main_runner):
    result = main_runner("task=bench", "bench.repeats=2", "bench.warmup=0", "bench.steps=2", "bench.forward_batches=2",
                "bench.epochs=3", "bench.cache=all", f"dataset.cache_dir={tmp_path / 'cache'}",
                # The device-side path on the CPU: the trainer decodes, crops and flips each batch itself,
                # and with the cache (d') sends cached pixels instead of JPEG bytes.
                "dataset.decode=cuda", "augment.crop_scale=[0.8,1.0]",
                # Two batches a step: the clock still times a bare repeat inside every timed epoch.
                "train.accumulate_grad_batches=2")  # fmt: skip
    [run] = list((tmp_path / "outputs" / "bench").iterdir())
    report = json.loads((run / "bench.json").read_text())
    assert "task=bench: test_resnet at 32 px, batch 16, fp32 on cpu" in result.stdout + result.stderr  # not "16, 32"
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
                                  "fused_optimizer": True, "background_checkpoints": True,
                                  "cudnn_benchmark": True}  # fmt: skip
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]
    assert (run / "pipeline" / "last.pth").is_file()  # the pipeline wrote its checkpoints like a run


@pytest.mark.parametrize(("override", "message"), [("bench.epochs=1", "bench.epochs=1"),
                                                   ("bench.cache=al", "bench.cache='al'; use none, eval")])  # fmt: skip
def test_a_bench_that_cannot_measure_what_is_asked_is_refused_before_measuring(
    tmp_path, main_runner, override, message
):
    result = main_runner("task=bench", override, check=False)
    assert result.returncode == 2 and message in result.stderr
    assert not (next((tmp_path / "outputs" / "bench").iterdir()) / "pipeline").exists()  # (b) never started


BENCH_TINY = ["task=bench", "bench.repeats=1", "bench.warmup=0", "bench.steps=2", "bench.forward_batches=2",
              "bench.epochs=2", "bench.cache=none", "train.device=cpu"]  # fmt: skip


def test_bench_switches_runs_each_setting_and_compares_it_with_the_defaults(tmp_path, shared_data_dir):
    overrides = [*TINY, *BENCH_TINY[1:], f"paths.root_dir={tmp_path}", f"paths.data_dir={shared_data_dir}",
                 f"dataset.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    out = tmp_path / "switches"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_switches.py"), "--switch",
                             "optimizer.fused=false", "--switch", "dataset.cache=all", "--out", str(out), "--",
                             *overrides], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "switches.json").read_text())
    table = report["settings"]
    assert list(table) == ["defaults", "optimizer.fused=false", "dataset.cache=all"]
    for setting, row in table.items():
        assert row["a"] > 0 and row["b"] > 0 and row["c"] > 0 and row["peak_rss_mib"] > 50, setting
    assert table["defaults"]["b_vs_defaults"] == table["defaults"]["c_vs_defaults"] == 1.0
    variant = table["optimizer.fused=false"]
    assert variant["b_vs_defaults"] == round(variant["b"] / table["defaults"]["b"], 3)
    # Each setting ran as its own task=bench, the switch reaching the run it names.
    settings = {p.name: json.loads((p / "bench.json").read_text())["settings"] for p in out.iterdir() if p.is_dir()}
    assert {name: row["fused_optimizer"] for name, row in settings.items()} == {"0_0": True, "0_1": False, "0_2": True}
    # (b) trains as a run does: from the cache under dataset.cache=all (the row measured the files before).
    assert {name: row["train_from_cache"] for name, row in settings.items()} == {"0_0": False, "0_1": False,
                                                                                "0_2": True}  # fmt: skip
    assert [p.name.split("-")[0] for p in (tmp_path / "cache").iterdir() if p.is_dir()] == ["train"]
    assert "optimizer.fused=false" in result.stdout and "b_vs_defaults" in result.stdout


def test_bench_switches_names_the_setting_that_failed(tmp_path, shared_data_dir):
    # A setting task=bench refuses (one epoch) stops the comparison with task=bench's own line, and exit 2
    # (a user's mistake). No --out: the runs go under paths.log_dir, never into the repository.
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_switches.py"), "--", "train.device=cpu",
                             f"paths.root_dir={tmp_path}", f"paths.data_dir={shared_data_dir}", "backbone=timm",
                             "backbone.name=test_resnet", "bench.epochs=1"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1].startswith("ERROR task=bench with defaults failed (2): bench.epochs=1")
    )
    assert (tmp_path / "outputs" / "bench_switches" / "0_0").is_dir()
    assert not (tmp_path / "outputs" / "bench_switches" / "switches.json").exists()  # nothing measured


def test_bench_switches_keeps_what_it_measured_when_a_later_setting_fails(tmp_path, shared_data_dir):
    out = tmp_path / "switches"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_switches.py"), "--switch", "bench.cache=al",
                             "--switch", "optimizer.fused=false", "--out", str(out), "--", *TINY, *BENCH_TINY[1:],
                             f"paths.root_dir={tmp_path}", f"paths.data_dir={shared_data_dir}"],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 2, result.stderr  # task=bench refused a value: the user's to fix
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR task=bench with bench.cache=al failed (2): bench.cache='al'; use none, eval")
    report = json.loads((out / "switches.json").read_text())
    assert report["settings"]["defaults"]["b"] > 0 and report["not_run"] == ["optimizer.fused=false"]
    assert report["settings"]["bench.cache=al"]["failed"].startswith("exit 2: bench.cache='al'; use none, eval")
    assert "defaults" in result.stdout and "failed (exit 2" in result.stdout


@pytest.mark.parametrize(("switch", "said"), [
    ("nosuchkey=1", "ERROR Could not override 'nosuchkey'."),
    ("optimizer.fused=flase", "ERROR optimizer.fused=flase is not true or false; this setting takes true or false"),
])  # fmt: skip
def test_bench_switches_refuses_a_mistyped_setting_before_the_first_run(tmp_path, switch, said):
    out = tmp_path / "switches"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_switches.py"), "--switch",
                             "optimizer.fused=false", "--switch", switch, "--out", str(out), "--",
                             "train.device=cpu", f"paths.root_dir={tmp_path}"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(said), line
    assert not out.exists() and not (tmp_path / "outputs").exists()  # nothing ran
