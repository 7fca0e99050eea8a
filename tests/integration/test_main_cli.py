"""scripts/main.py end to end, as a user runs it: train -> run dir -> registry -> test -> sweeps -> batches."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MAIN, REPO, TINY, run_main
from helpers import TINY_DATA, error_lines, only_dir, registry

pytestmark = pytest.mark.slow

RUN_DIR_FILES = {
    ".hydra", "config_resolved.yaml", "git.txt", "requirements.txt", "best.pth", "last.pth",
    "metrics_log.csv", "metrics_test.json", "run.log",
}  # fmt: skip


def test_two_phase_train_then_test_then_registry(tmp_path, main_runner, shared_data_dir):
    # A fresh interpreter, as a user starts it (the other CLI tests fork theirs from a warm one).
    result = main_runner("logger=tensorboard", "name=expt 1", "tags=[baseline,cpu]", fresh=True)
    run = only_dir(tmp_path / "outputs" / "train")
    assert run.name.endswith("_expt-1")  # the name, as a file name can hold it
    assert RUN_DIR_FILES | {"tb"} <= {p.name for p in run.iterdir()}
    assert (run / ".hydra" / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
    assert any((run / "tb").iterdir())
    # The code's own commit, though paths.root_dir (data and outputs) is a temp dir outside any repository.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert (run / "git.txt").read_text().startswith(f"commit {head}\n") and head
    assert "torch==" in (run / "requirements.txt").read_text()

    rows = list(csv.DictReader((run / "metrics_log.csv").open()))
    assert [r["phase"] for r in rows] == ["head", "finetune"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[0]["lr_backbone"]) == 0.0 and float(rows[1]["lr_backbone"]) > 0
    for key in ("train_loss", "val_loss", "val_auc", "val_accuracy", "seconds", "lr_head"):
        assert all(r[key] != "" for r in rows), key

    _check_tensorboard(run / "tb", rows)

    log = (run / "run.log").read_text()
    assert "epoch 1 [head]" in log and "epoch 2 [finetune]" in log and "overrides:" in log
    # Each epoch names the first 8 images of its first training batch (shuffled) and validation batch (in order).
    for epoch in (1, 2):
        [train_line] = [
            line for line in log.splitlines() if f"epoch {epoch}, first training batch starts with: " in line
        ]
        assert len(train_line.split(": ", 1)[1].split(", ")) == 8 and "/train/" in train_line
    valid_rows = list(csv.DictReader((shared_data_dir / "synthetic" / TINY_DATA / "valid.csv").open()))[:8]
    expected = ", ".join(
        str(shared_data_dir / "synthetic" / TINY_DATA / "real_vs_fake" / "real-vs-fake" / row["path"])
        for row in valid_rows
    )
    assert f"epoch 2, first validation batch starts with: {expected}" in log

    best = torch.load(run / "best.pth", weights_only=True)
    assert best["model_spec"]["name"] == "test_resnet" and best["preprocess"]["img_size"] == 32
    test_metrics = json.loads((run / "metrics_test.json").read_text())
    assert test_metrics["n_samples"] == 32 and test_metrics["n_real"] == test_metrics["n_fake"] == 16
    assert {"auc", "ap", "eer", "accuracy", "real_accuracy", "fake_accuracy", "precision", "recall", "f1",
            "log_loss", "confusion_matrix", "n_damaged"} <= set(test_metrics)  # fmt: skip

    reg = registry(tmp_path)
    assert len(reg["runs"]) == 1
    entry = reg["runs"][0]
    assert entry["run_name"] == run.name == reg["best_run"]
    assert entry["best_val_auc"] == pytest.approx(max(float(r["val_auc"]) for r in rows), abs=1e-6)
    assert entry["test_metrics"]["auc"] == test_metrics["auc"]
    assert entry["backbone"] == "test_resnet" and entry["dataset"] == "synthetic"
    assert entry["name"] == "expt 1" and entry["tags"] == ["baseline", "cpu"]
    assert "phase.head_epochs=1" in entry["overrides"]
    assert (tmp_path / "models" / "best_model.pth").read_bytes() == (run / "best.pth").read_bytes()
    assert "run dir" in result.stdout and str(run) in result.stdout
    # The summary names every output the run left, found on disk.
    written = [name for name in ("report.html", "predictions.csv", "training_curves.png", "model_card.md")
               if (run / name).is_file()]  # fmt: skip
    assert written and all(name in result.stdout for name in written), result.stdout

    # task=test defaults to the global best and records its figures in the registry entry.
    main_runner("task=test")
    test_run = only_dir(tmp_path / "outputs" / "test")
    again = json.loads((test_run / "metrics_test.json").read_text())
    assert again["auc"] == pytest.approx(test_metrics["auc"])
    assert again["run_name"] == run.name
    assert registry(tmp_path)["runs"][0]["test_metrics"]["evaluated_at"] == again["evaluated_at"]

    # ... and accepts a run dir.
    main_runner("task=test", f"ckpt={run}")
    assert len(list((tmp_path / "outputs" / "test").iterdir())) == 2
    # The embedded set at another size is another set of images: tested as asked, and said so.
    own = registry(tmp_path)["runs"][0]["test_metrics"]
    other = main_runner("task=test", f"ckpt={run}", "dataset.img_size=48", "eval.report=false", "eval.bootstrap=0")
    assert "was trained at 32 px; dataset.img_size=48 picks the test images" in other.stdout + other.stderr
    assert registry(tmp_path)["runs"][0]["test_metrics"] == own  # the run's figures stay its own

    # The listing answers without importing torch: it reads one JSON file.
    probe = (
        "import atexit, runpy, sys; atexit.register(lambda: print('torch imported:', 'torch' in sys.modules)); "
        f"sys.argv = [{str(MAIN)!r}, 'paths.root_dir={tmp_path}', 'task=registry']; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    listing = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert listing.returncode == 0, listing.stderr
    assert run.name in listing.stdout and "test_resnet" in listing.stdout and "baseline, cpu" in listing.stdout
    assert "torch imported: False" in listing.stdout
    # Filtered by name and tags.
    assert run.name in main_runner("task=registry", "task.match=expt 1", "task.tags=[cpu]").stdout
    assert "no runs (tagged gpu) registered" in main_runner("task=registry", "task.tags=[gpu]").stdout


def _check_tensorboard(tb: Path, rows: list[dict]) -> None:
    """TensorBoard's own reader sees grouped tags at the global step, the figures metrics_log.csv holds,
    and the run's hyperparameters for the HParams dashboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(tb)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/epoch_loss", "lr/head", "lr/backbone", "val/loss", "val/auc", "val/accuracy",
            "epoch"} <= tags  # fmt: skip
    steps = [int(r["step"]) for r in rows]
    for tag, column in {"val/auc": "val_auc", "val/loss": "val_loss", "train/epoch_loss": "train_loss"}.items():
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(step, pytest.approx(float(r[column]), abs=1e-6)) for step, r in zip(steps, rows)], tag
    # Per-interval points, at optimizer steps up to the last epoch's end; the backbone's lr is 0 while frozen.
    loss_steps = [e.step for e in events.Scalars("train/loss")]
    assert loss_steps == sorted(loss_steps) and len(loss_steps) >= len(rows) and loss_steps[-1] == steps[-1]
    backbone_lr = {e.step: e.value for e in events.Scalars("lr/backbone")}
    assert min(backbone_lr.values()) == 0 and max(backbone_lr.values()) > 0
    hparams = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["backbone.name"].string_value == "test_resnet"
    assert session.hparams["phase.head_epochs"].number_value == 1
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    assert "val/auc" in {info.name.tag for info in experiment.metric_infos}


def test_multirun_registers_every_job_and_the_decoded_cache_changes_no_figure(tmp_path, main_runner):
    main_runner("-m", "dataset.cache=none,all", f"dataset.cache_dir={tmp_path / 'cache'}")
    sweep = only_dir(tmp_path / "multirun")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    # Each job's dir: its number, then its overrides, sorted by key as Hydra's override_dirname has them.
    assert [j.name[:2] for j in jobs] == ["0_", "1_"]
    assert ",dataset.cache=none," in jobs[0].name and ",dataset.cache=all," in jobs[1].name and "/" not in jobs[0].name
    for job in jobs:
        assert (job / "best.pth").is_file() and (job / "metrics_test.json").is_file()
    reg = registry(tmp_path)
    names = sorted(e["run_name"] for e in reg["runs"])
    assert names == [f"{sweep.name}/{job.name}" for job in jobs]
    best = next(e for e in reg["runs"] if e["run_name"] == reg["best_run"])
    assert best["best_val_auc"] == max(e["best_val_auc"] for e in reg["runs"])
    assert (tmp_path / "models" / "best_model.pth").read_bytes() == (Path(best["run_dir"]) / "best.pth").read_bytes()

    # The cache holds evaluation's framing of each image, so validation and test read from it give the
    # very figures decoding the files gives. The generated images are already img_size square, so
    # training's augmentations of the cached image (cache=all) match too.
    logs = [[{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader((job / "metrics_log.csv").open())]
            for job in jobs]  # fmt: skip
    tests = [json.loads((job / "metrics_test.json").read_text()) for job in jobs]
    assert logs[0] == logs[1]
    assert tests[0]["auc"] == tests[1]["auc"] and tests[0]["accuracy"] == tests[1]["accuracy"]
    cached = sorted(
        p.name.split("-")[0] for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name not in ("scans", "sha256")
    )
    assert cached == ["test", "train", "valid"]
    # The job without the cache scanned the files (train, valid, and test, since it tests at its end),
    # and kept its answers for the next session.
    assert len(list((tmp_path / "cache" / "scans").glob("*.json"))) == 3
    # The image digests of the promotion set (the validation set) and of the test set, which must not
    # be it: hashed once for both jobs.
    assert len(list((tmp_path / "cache" / "sha256").glob("*.json"))) == 2
    built = [[line.split(" of ")[1].split()[0] for line in (job / "run.log").read_text().splitlines()
              if "into the cache" in line] for job in jobs]  # fmt: skip
    names = [[Path(csv).name for csv in job] for job in built]
    assert names == [[], ["train.csv", "valid.csv", "test.csv"]]


def test_batches_session_by_session_from_the_global_best(tmp_path, main_runner, shared_data_dir):
    main_runner()  # session 1 on the full set: creates the global best
    synthetic = shared_data_dir / "synthetic" / TINY_DATA
    batches = tmp_path / "batches"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_batches.py"), "--train-csv", str(synthetic / "train.csv"),
         "--val-csv", str(synthetic / "valid.csv"), "--out-dir", str(batches), "--n-batches", "2"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert (batches / "batch2" / "train.csv").is_file()
    main_runner(
        "dataset=batch", "dataset.batch=2", f"dataset.root={synthetic}", f"dataset.batches_dir={batches}",
        "dataset.img_size=32", "dataset.batch_size=16", "dataset.num_workers=0", "init_from=best",
        "backbone=timm", "backbone.name=test_resnet", "phase.head_epochs=1", "phase.finetune_epochs=0",
        "logger=none", tiny=False,
    )  # fmt: skip
    runs = sorted((tmp_path / "outputs" / "train").iterdir())
    log = (runs[-1] / "run.log").read_text()
    assert f"initialised the model from {tmp_path / 'models' / 'best_model.pth'}" in log
    assert "data: 32 train, 16 validation images from batch2" in log
    entries = registry(tmp_path)["runs"]
    assert sorted(e["dataset"] for e in entries) == ["batch2", "synthetic"]


def test_launches_in_the_same_second_get_their_own_run_dirs(tmp_path):
    args = [sys.executable, str(MAIN), f"paths.root_dir={tmp_path}", "task=registry"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert len(list((tmp_path / "outputs" / "registry").iterdir())) == 3


@pytest.mark.parametrize(("mistake", "said"), [
    ("dataset.batch_size=0", "dataset.batch_size=0 must be a positive integer"),
    ("phase.head_epochs=abc", "phase.head_epochs=abc is not an integer"),
    ("seed=1.5", "seed=1.5 is not an integer"),  # int(), numpy or torch.manual_seed's traceback
    ("seed=99999999999999999999", "seed=99999999999999999999 must be a whole number from 0 to 2**63 - 1"),
    ("seed=null", "seed=None is not an integer"),
])  # fmt: skip
def test_a_bad_setting_is_refused_before_the_scan_and_the_dir_stays_free(tmp_path, main_runner, mistake, said):
    """Found after the images were scanned, it left a used run dir, which refused the corrected command."""
    run_dir = tmp_path / "fixed"
    refused = main_runner(mistake, f"hydra.run.dir={run_dir}", check=False)
    assert refused.returncode == 2 and error_lines(refused) == [f"ERROR {said}"], refused.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "run.log", "status.json"]
    assert "images" not in (run_dir / "run.log").read_text()  # neither scanned nor counted
    corrected = main_runner(f"hydra.run.dir={run_dir}", "phase.finetune_epochs=0")
    assert corrected.returncode == 0 and (run_dir / "best.pth").is_file()


def test_damaged_images_are_replaced_logged_and_counted(tmp_path, main_runner, shared_data_dir):
    main_runner("train.do_test=false", "phase.finetune_epochs=0")  # makes sure the shared data exists
    import shutil

    root = tmp_path / "damaged"
    shutil.copytree(shared_data_dir / "synthetic" / TINY_DATA, root)
    images = root / "real_vs_fake" / "real-vs-fake"
    train_images = sorted((images / "train" / "real").glob("*.jpg"))
    truncated, empty = train_images[0], train_images[1]
    truncated.write_bytes(truncated.read_bytes()[:200])
    empty.write_bytes(b"")
    missing = sorted((images / "valid" / "fake").glob("*.jpg"))[0]
    missing.unlink()
    missing_test = sorted((images / "test" / "real").glob("*.jpg"))[0]
    missing_test.unlink()

    # 2 of 64 train images (3%) exceed the default dataset.max_bad_fraction, which would stop the run.
    result = main_runner(f"dataset.root={root}", "phase.finetune_epochs=0", "dataset.max_bad_fraction=0.05",
                         "eval.bootstrap=0", "eval.report=false")  # fmt: skip
    run = sorted((tmp_path / "outputs" / "train").iterdir())[-1]
    log = (run / "run.log").read_text()
    for path in (truncated, empty, missing, missing_test):
        assert f"damaged image replaced by a black image: {path}" in log
    assert log.count("damaged image replaced") == 4  # each logged once, not once per epoch
    # The test's own count too: the summary and the registry left it out (metrics_test.json had it).
    assert "train 2, valid 1, test 1" in result.stdout
    entry = next(e for e in registry(tmp_path)["runs"] if e["run_dir"] == str(run))
    assert entry["damaged_images"] == {"train": 2, "valid": 1, "test": 1}


def test_a_training_with_loader_workers_exits_when_done(tmp_path, shared_data_dir):
    """A head-only run with a loader worker printed its summary, then hung at exit for ever: its persistent
    workers ignore SIGTERM, and multiprocessing's exit hook joined them after terminating them with it."""
    result = run_main(tmp_path, *TINY, "phase.finetune_epochs=0", "dataset.num_workers=1", "train.do_test=false",
                      data_dir=shared_data_dir, fresh=True, timeout=150)  # fmt: skip
    assert "finished in" in result.stdout + result.stderr
