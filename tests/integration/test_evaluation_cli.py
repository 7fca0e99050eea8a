"""The evaluation end to end: the operating point chosen on validation and stored, calibration,
intervals, robustness, extra test sets, plots, report.html in Chromium, overrides, cam, compare."""

from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from browser import render
from helpers import TINY_DATA, error_lines, only_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deepfake.data.synthetic import IMAGE_SUBDIR, generate_synthetic_dataset

pytestmark = pytest.mark.slow

PLOTS = {"roc", "pr", "histogram", "confusion", "reliability", "robustness", "generalisation"}
ONE_PER_KIND = "eval.perturbations={jpeg:[30],blur:[2],rescale:[0.5],noise:[0.05]}"


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_train_test_report_override_cam_compare(tmp_path, main_runner, shared_data_dir):
    blending = generate_synthetic_dataset(tmp_path / "blending", n_train=2, n_valid=2, n_test=16, image_size=32,
                                          generator="blending")  # fmt: skip
    valid_csv = shared_data_dir / "synthetic" / TINY_DATA / "valid.csv"
    sets = f"eval.sets={{valid:'{valid_csv}',blending:{{csv:'{blending / 'test.csv'}',root_dir:'{blending / IMAGE_SUBDIR}'}}}}"
    main_runner("logger=tensorboard", "eval.calibrate=temperature", "eval.robustness=true", ONE_PER_KIND, sets,
                "eval.bootstrap=200", "eval.confidence=0.975")  # fmt: skip
    run = only_dir(tmp_path / "outputs" / "train")

    # best.pth (and so the global best) holds what was chosen on validation.
    best = torch.load(run / "best.pth", weights_only=True)
    assert best["threshold_policy"] == "eer" and 0 < best["threshold"] < 1
    assert best["temperature"] != 1.0  # a temperature was fitted
    point = best["operating_point"]
    assert point["chosen_on"] == "validation" and point["threshold"] == best["threshold"]
    assert point["n_real"] + point["n_fake"] == 32 and {"accuracy", "fpr", "tpr", "ece", "brier"} <= set(point)
    assert torch.load(tmp_path / "models" / "best_model.pth", weights_only=True)["threshold"] == best["threshold"]

    metrics = json.loads((run / "metrics_test.json").read_text())
    assert metrics["threshold"] == best["threshold"] and metrics["threshold_source"] == "checkpoint"
    assert metrics["temperature"] == best["temperature"] and metrics["threshold_policy"] == "eer"
    assert 0 <= metrics["accuracy_at_0.5"] <= 1 and metrics["validation_operating_point"] == point
    for name in ("auc", "ap", "eer", "accuracy"):
        low, high = metrics["intervals"][name]
        assert low <= metrics[name] <= high, name
    assert metrics["bootstrap"]["resamples"] == 200 and metrics["bootstrap"]["confidence"] == 0.975
    assert [p["max_fpr"] for p in metrics["tpr_at_fpr"]] == [0.001, 0.01, 0.05]
    assert metrics["calibration"]["temperature"] == best["temperature"] and metrics["calibration"]["ece_bins"] == 15
    assert [(r["perturbation"], r["severity"]) for r in metrics["robustness"]] == [
        ("none", None), ("jpeg", 30), ("blur", 2), ("rescale", 0.5), ("noise", 0.05)]  # fmt: skip
    assert metrics["robustness"][0]["auc"] == metrics["auc"]
    assert [(s["set"], s["n_samples"]) for s in metrics["sets"]] == [("test", 32), ("valid", 32), ("blending", 16)]
    assert metrics["sets"][0]["auc"] == metrics["auc"] and metrics["sets"][2]["intervals"]["auc"] is not None

    # predictions.csv holds the calibrated p(fake), sigmoid(logit / T): its log loss is the report's,
    # and task=predict on the same images gives the same scores and calls (the temperature applied once).
    tested = pd.read_csv(run / "predictions.csv")
    fake = (tested["true_label"] == "fake").to_numpy()
    p_fake = tested["p_fake"].clip(1e-7, 1 - 1e-7).to_numpy()
    log_loss = -(np.log(p_fake[fake]).sum() + np.log(1 - p_fake[~fake]).sum()) / len(tested)
    assert log_loss == pytest.approx(metrics["log_loss"], abs=1e-5)
    root = shared_data_dir / "synthetic" / TINY_DATA
    main_runner("task=predict", f"ckpt={run}", f"predict.input={root / 'test.csv'}",
                f"predict.root_dir={root / IMAGE_SUBDIR}", f"predict.output={tmp_path / 'predicted'}/")  # fmt: skip
    predicted = pd.read_csv(tmp_path / "predicted" / "predictions.csv")
    assert (predicted["path"] == tested["path"]).all() and (predicted["label"] == tested["label"]).all()
    assert np.abs(predicted["p_fake"] - tested["p_fake"]).max() < 1e-6

    # Pictures: PNGs in eval/, the training curves beside them, TensorBoard images read back.
    assert {p.stem for p in (run / "eval").glob("*.png")} == PLOTS
    assert (run / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    tags = set()
    for events in (run / "tb").glob("events.out.tfevents.*"):
        tags |= set(EventAccumulator(str(events)).Reload().Tags()["images"])
    assert {f"eval/{name}" for name in PLOTS} <= tags

    # report.html: every plot embedded, nothing fetched, rendered in headless Chromium.
    page = (run / "report.html").read_text()
    parser = Images()
    parser.feed(page)
    assert len(parser.sources) == len(PLOTS) + 1 and all(s.startswith("data:image/png;base64,") for s in parser.sources)
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    assert "97.5% interval" in page and "97.5% percentile bootstrap" in page  # was rounded to 98%
    shown = render(run / "report.html", tmp_path / "report.png")
    assert shown.requests == [] and shown.broken_images == [] and not shown.is_blank()
    assert len(shown.images) == len(PLOTS) + 1
    assert "Operating point" in shown.text and "policy eer" in shown.text and "Robustness" in shown.text

    main_runner("task=compare", "compare.backbone=test_resnet")
    rows = list(csv.DictReader((only_dir(tmp_path / "outputs" / "compare") / "compare.csv").open()))
    assert [r["run_name"] for r in rows] == [run.name]
    assert float(rows[0]["threshold"]) == best["threshold"] and rows[0]["threshold_policy"] == "eer"
    assert float(rows[0]["test_auc_low"]) <= float(rows[0]["test_auc"]) <= float(rows[0]["test_auc_high"])
    assert rows[0]["test_threshold_source"] == "checkpoint"

    # eval.threshold on the command line wins, and is recorded as an override.
    main_runner("task=test", f"ckpt={run}", "eval.threshold=0.3", "eval.report=false", "eval.bootstrap=0")
    override = json.loads((only_dir(tmp_path / "outputs" / "test") / "metrics_test.json").read_text())
    assert override["threshold"] == 0.3 and override["threshold_source"] == "eval.threshold"
    assert override["decision_rule"]["stored_threshold"] == best["threshold"]
    assert override["intervals"]["auc"] is None and "report" not in override

    # task=cam follows the same rule: at threshold 0 every image is called fake, at 1 none is.
    cam = ["task=cam", f"ckpt={run}", "cam.metrics=false", "cam.num_samples=4", "cam.target_layer=layer2"]
    for threshold, called in (("0.0", "fake"), ("1.0", "real")):
        main_runner(*cam, f"eval.threshold={threshold}")
        gallery = (sorted((tmp_path / "outputs" / "cam").iterdir())[-1] / "cam" / "index.html").read_text()
        assert gallery.count(f"explains {called}</figcaption>") == 4, threshold


def test_permuting_the_test_labels_does_not_move_the_threshold(tmp_path, main_runner, shared_data_dir):
    fast = ["deterministic=true", "eval.report=false", "eval.bootstrap=0"]
    main_runner(*fast)  # generates the shared data when this test runs first
    test = pd.read_csv(shared_data_dir / "synthetic" / TINY_DATA / "test.csv")
    labels = test["label"].sample(frac=1.0, random_state=0).to_numpy()
    shuffled = test.assign(label=labels, label_str=np.where(labels == 1, "real", "fake"))  # label_str follows
    assert (shuffled["label"] != test["label"]).any()
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)
    main_runner(*fast, f"dataset.test_csv={tmp_path / 'shuffled.csv'}")
    first, second = sorted((tmp_path / "outputs" / "train").iterdir())
    thresholds = [torch.load(run / "best.pth", weights_only=True)["threshold"] for run in (first, second)]
    assert thresholds[0] == thresholds[1]

    # task=test of the first run on another test set: the run's own registry figures stay (they were
    # replaced by whatever set was tested last).
    def test_metrics(run=first) -> dict:
        entries = json.loads((tmp_path / "models" / "model_metadata.json").read_text())["runs"]
        return next(entry["test_metrics"] for entry in entries if entry["run_name"] == run.name)

    own = test_metrics()
    main_runner("task=test", f"ckpt={first}", f"dataset.test_csv={tmp_path / 'shuffled.csv'}", *fast[1:])
    assert test_metrics() == own and own["test_csv"] != str(tmp_path / "shuffled.csv")
    aucs = [json.loads((run / "metrics_test.json").read_text())["auc"] for run in (first, second)]
    assert aucs[0] != aucs[1]  # the labels did change what the test measures

    # The second run's own test CSV rewritten under its path (as the embedded set is, regenerated at
    # other sizes): its registry figures stay those of the set it was tested on.
    second_own = test_metrics(second)
    shuffled.head(20).to_csv(tmp_path / "shuffled.csv", index=False)
    main_runner("task=test", f"ckpt={second}", f"dataset.test_csv={tmp_path / 'shuffled.csv'}", *fast[1:])
    assert test_metrics(second) == second_own and second_own["n_samples"] == len(shuffled)

    # A threshold tried out on the run's own test set: its figures go to the test dir, not the registry.
    tried = main_runner("task=test", f"ckpt={first}", "eval.threshold=0.9", *fast[1:])
    assert test_metrics() == own and own["threshold"] != 0.9
    [tested] = [run for run in (tmp_path / "outputs" / "test").iterdir()
                if json.loads((run / "metrics_test.json").read_text())["threshold"] == 0.9]  # fmt: skip
    assert "keeps its test figures at its own threshold" in tried.stdout + tried.stderr

    # The run's own test CSV spelled another way (a trailing /., a relative path) is still its own: the
    # registry took the new figures only when the path was typed exactly as in training.
    spelled = f"{shared_data_dir}/synthetic/{TINY_DATA}/./test.csv"  # pathlib would drop the /.
    retested = main_runner("task=test", f"ckpt={first}", f"dataset.test_csv={spelled}", *fast[1:])
    assert "keeps its test figures" not in retested.stdout + retested.stderr
    assert test_metrics()["test_csv"] == str(shared_data_dir / "synthetic" / TINY_DATA / "test.csv")


def test_a_bad_eval_setting_stops_before_training(tmp_path, main_runner):
    result = main_runner("eval.threshold_policy=youden", check=False)
    errors = error_lines(result)
    assert result.returncode == 2 and len(errors) == 1 and "eval.threshold_policy='youden'" in errors[0], errors
    assert not list((tmp_path / "outputs" / "train").glob("*/metrics_log.csv"))
    assert not (tmp_path / "models" / "model_metadata.json").exists()


def test_task_test_refuses_a_test_set_it_cannot_read_and_keeps_the_registry(tmp_path, main_runner, shared_data_dir):
    """task=test under a wrong dataset.root_dir scored black stand-ins only: AUC 0.5, exit 0, and that
    0.5 replaced the run's test figures in the registry. It stops as training does, before scoring."""
    main_runner("eval.report=false", "eval.bootstrap=0")
    run = only_dir(tmp_path / "outputs" / "train")

    def test_metrics() -> dict:
        entries = json.loads((tmp_path / "models" / "model_metadata.json").read_text())["runs"]
        return next(entry["test_metrics"] for entry in entries if entry["run_name"] == run.name)

    own = test_metrics()
    wrong = tmp_path / "wrong_root"
    wrong.mkdir()
    test_csv = shared_data_dir / "synthetic" / TINY_DATA / "test.csv"
    cases = {
        f"dataset.root_dir={wrong}": f"test set: {test_csv}",  # the walkthrough's mistake
        f"eval.sets={{far:{{csv:'{test_csv}',root_dir:'{wrong}'}}}}": "far set: ",  # an extra set's root
    }
    for override, said in cases.items():
        result = main_runner("task=test", f"ckpt={run}", override, check=False)
        errors = error_lines(result)
        assert result.returncode == 2 and len(errors) == 1, result.stdout + result.stderr
        assert errors[0].startswith(f"ERROR {said}") and "32 of 32 images are damaged" in errors[0], errors
        assert "dataset.max_bad_fraction=0.01" in errors[0] and f"root_dir={wrong})" in errors[0], errors
        assert "test on " not in result.stdout + result.stderr  # nothing was scored
    assert test_metrics() == own and own["auc"] != 0.5
    for written in ("metrics_test.json", "predictions.csv", "report.html"):
        assert not list((tmp_path / "outputs" / "test").glob(f"*/{written}")), written


def test_a_model_that_scores_nan_is_refused_in_one_line_by_test_and_predict(tmp_path, main_runner, shared_data_dir):
    """A checkpoint whose weights hold a nan: task=test ended in scikit-learn's "Input contains NaN"
    traceback, and predict wrote p_fake nan, called real, for every image."""
    import torch

    main_runner("eval.report=false", "eval.bootstrap=0", "train.do_test=false")
    run = only_dir(tmp_path / "outputs" / "train")
    checkpoint = torch.load(run / "best.pth", weights_only=True)
    bias = next(key for key in checkpoint["model"] if key.endswith(".bias"))
    checkpoint["model"][bias] = torch.full_like(checkpoint["model"][bias], float("nan"))
    broken = tmp_path / "nan.pth"
    torch.save(checkpoint, broken)
    test_csv = shared_data_dir / "synthetic" / TINY_DATA / "test.csv"
    for task in ("task=test", f"task=predict predict.input={test_csv}"):
        result = main_runner(*task.split(), f"ckpt={broken}", check=False)
        errors = error_lines(result)
        assert result.returncode == 2 and len(errors) == 1, result.stdout + result.stderr
        assert "of 32 images is not finite (nan or inf)" in errors[0] and "Traceback" not in result.stderr, errors
    assert not list((tmp_path / "outputs").glob("*/*/metrics_test.json"))
    assert not list((tmp_path / "outputs").glob("*/*/predictions.csv"))


def test_without_a_training_test_only_the_runs_own_test_set_fills_the_registry(tmp_path, main_runner, shared_data_dir):
    """train.do_test=false: the first task=test, on any CSV (or the run's CSV under a degraded copy of its
    images), became the run's registry figures, and its own test set was then refused."""
    fast = ["eval.bootstrap=0", "eval.report=false"]
    main_runner("train.do_test=false", *fast)
    run = only_dir(tmp_path / "outputs" / "train")

    def test_metrics() -> dict | None:
        entries = json.loads((tmp_path / "models" / "model_metadata.json").read_text())["runs"]
        return next(entry["test_metrics"] for entry in entries if entry["run_name"] == run.name)

    root = shared_data_dir / "synthetic" / TINY_DATA
    test = pd.read_csv(root / "test.csv")
    test[test["label"] == 0].to_csv(tmp_path / "onlyfake.csv", index=False)
    other = main_runner("task=test", f"ckpt={run}", f"dataset.test_csv={tmp_path / 'onlyfake.csv'}", "eval.bootstrap=0")
    assert test_metrics() is None and "keeps its test figures for its own test set" in other.stdout + other.stderr
    # Undefined figures (AUC on one class) read n/a in report.html, as in the log and the model card.
    page = (only_dir(tmp_path / "outputs" / "test") / "report.html").read_text()
    assert "<td>AUC</td><td>n/a</td>" in page and "<td>AP</td><td>n/a</td>" in page
    degraded = tmp_path / "degraded"
    shutil.copytree(root / IMAGE_SUBDIR, degraded)
    main_runner("task=test", f"ckpt={run}", f"dataset.root_dir={degraded}", *fast)
    assert test_metrics() is None

    main_runner("task=test", f"ckpt={run}", *fast)
    own = test_metrics()
    assert own["test_csv"] == str(root / "test.csv") and own["test_root_dir"] == str(root / IMAGE_SUBDIR)
    main_runner("task=test", f"ckpt={run}", f"dataset.root_dir={degraded}", *fast)  # now with figures kept
    assert test_metrics() == own


def test_task_test_refuses_a_bad_setting_or_checkpoint_before_the_image_scan(tmp_path, main_runner):
    """eval.threshold=1.5, a last.pth, an .onnx file: refused only once every test image was decoded;
    eval.calibrate and eval.threshold_policy were never read by task=test (eval.calibrate=bogus: exit 0)."""
    main_runner("train.do_test=false", "eval.bootstrap=0", "eval.report=false")
    run = only_dir(tmp_path / "outputs" / "train")
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    cases = {
        (f"ckpt={run}", "eval.threshold=1.5"): "eval.threshold=1.5 must be",
        (f"ckpt={run / 'last.pth'}",): "is a last.pth",
        (f"ckpt={tmp_path / 'model.onnx'}",): "is an ONNX export",
        (f"ckpt={run}", "eval.calibrate=bogus"): "eval.calibrate='bogus'",
        (f"ckpt={run}", "eval.threshold_policy=youden"): "eval.threshold_policy='youden'",
    }
    for overrides, said in cases.items():
        result = main_runner("task=test", *overrides, check=False)
        errors = error_lines(result)
        assert result.returncode == 2 and len(errors) == 1 and said in errors[0], result.stdout + result.stderr
        assert "checked" not in result.stdout + result.stderr, overrides  # no image was decoded first
    # Valid, but not what chose the stored operating point: one warning says what applies.
    tested = main_runner("task=test", f"ckpt={run}", "eval.calibrate=temperature", "eval.threshold_policy=eer",
                         "eval.bootstrap=0", "eval.report=false")  # fmt: skip
    warned = [line for line in (tested.stdout + tested.stderr).splitlines() if "[WARNING]" in line]
    assert len(warned) == 1 and "eval.calibrate=temperature (stored: none)" in warned[0], warned
    assert "eval.threshold_policy" not in warned[0] and "eval.threshold=<p_fake> overrides" in warned[0]


def test_a_fixed_policy_threshold_is_the_checkpoints_own_operating_point(tmp_path, main_runner):
    """The README's `eval.threshold_policy=fixed eval.threshold=0.5`: its own test reported an eval.threshold
    override of what it had stored, and a retest at eval.threshold=0.5 was kept out of the registry."""
    main_runner("eval.threshold_policy=fixed", "eval.threshold=0.5", "eval.bootstrap=0")
    run = only_dir(tmp_path / "outputs" / "train")
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert (metrics["threshold"], metrics["threshold_source"], metrics["threshold_policy"]) == (
        0.5,
        "checkpoint",
        "fixed",
    )
    assert "override" not in (run / "report.html").read_text()

    def test_metrics() -> dict:
        return json.loads((tmp_path / "models" / "model_metadata.json").read_text())["runs"][0]["test_metrics"]

    assert test_metrics()["threshold_source"] == "checkpoint"
    before = test_metrics()["evaluated_at"]
    retest = main_runner("task=test", f"ckpt={run}", "eval.threshold=0.5", "eval.bootstrap=0", "eval.report=false")
    assert "keeps its test figures" not in retest.stdout + retest.stderr and test_metrics()["evaluated_at"] != before


def assert_predictions_give_the_reported_rates(run) -> None:
    """predictions.csv thresholded where metrics_test.json says gives its rates: with p_fake in 8 digits, a
    tpr_at_fpr threshold (a test image's own score) called that image real in the file."""
    metrics = json.loads((run / "metrics_test.json").read_text())
    table = pd.read_csv(run / "predictions.csv", float_precision="round_trip")  # pandas' default is 1 ulp off
    p_fake, fake = table["p_fake"].to_numpy(), (table["true_label"] == "fake").to_numpy()
    assert len(metrics["tpr_at_fpr"]) == 3 and not table["damaged"].notna().any()
    for point in metrics["tpr_at_fpr"]:
        called = p_fake >= point["threshold"]
        assert (called[~fake].mean(), called[fake].mean()) == (point["fpr"], point["tpr"]), point
    called = p_fake >= metrics["threshold"]
    assert [[int((~called[~fake]).sum()), int(called[~fake].sum())],
            [int((~called[fake]).sum()), int(called[fake].sum())]] == metrics["confusion_matrix"]  # fmt: skip


def test_a_retest_with_other_reporting_settings_leaves_the_registry_figures(tmp_path, main_runner):
    """task=test eval.bootstrap=0 replaced the registry's intervals by None, and another eval.ece_bins or
    seed changed its figures without a word. The test dir has the new figures; the registry keeps its own."""
    main_runner("eval.calibrate=temperature", "eval.report=false")
    run = only_dir(tmp_path / "outputs" / "train")
    assert_predictions_give_the_reported_rates(run)

    def test_metrics() -> dict:
        return json.loads((tmp_path / "models" / "model_metadata.json").read_text())["runs"][0]["test_metrics"]

    own = test_metrics()
    assert own["evaluated_with"] == {"eval.bootstrap": 1000, "eval.confidence": 0.95, "seed": 42, "eval.ece_bins": 15}
    cases = {
        "eval.bootstrap=0": "made with eval.bootstrap=1000 eval.confidence=0.95 seed=42; these, with eval.bootstrap=0,",
        "eval.ece_bins=5": "made with eval.ece_bins=15; these, with eval.ece_bins=5,",
        "seed=7": "made with seed=42; these, with seed=7,",
    }
    written = {}
    for override, said in cases.items():
        result = main_runner("task=test", f"ckpt={run}", "eval.report=false", override)
        [line] = [line for line in (result.stdout + result.stderr).splitlines() if "keeps its test figures" in line]
        assert f"keeps its test figures {said} are in " in line and test_metrics() == own, line
        written[override] = json.loads(Path(line.split(" are in ")[1]).read_text())
    assert written["eval.bootstrap=0"]["intervals"]["auc"] is None and own["intervals"]["auc"] is not None
    assert written["eval.ece_bins=5"]["calibration"]["ece_bins"] == 5 and written["seed=7"]["bootstrap"]["seed"] == 7

    retest = main_runner("task=test", f"ckpt={run}", "eval.report=false")  # the settings it was made with
    assert "keeps its test figures" not in retest.stdout + retest.stderr
    assert test_metrics()["evaluated_at"] != own["evaluated_at"] and test_metrics()["intervals"] == own["intervals"]

    # Figures registered before they recorded their settings: their intervals say they had a bootstrap,
    # which a retest without one keeps; a retest with one replaces them, as it did.
    path = tmp_path / "models" / "model_metadata.json"
    older = json.loads(path.read_text())
    del older["runs"][0]["test_metrics"]["evaluated_with"]
    path.write_text(json.dumps(older))
    result = main_runner("task=test", f"ckpt={run}", "eval.report=false", "eval.bootstrap=0")
    assert "keeps its test figures made with eval.bootstrap=some (intervals recorded); these, with eval.bootstrap=0," in (
        result.stdout + result.stderr)  # fmt: skip
    assert test_metrics()["intervals"] == own["intervals"] and "evaluated_with" not in test_metrics()
    main_runner("task=test", f"ckpt={run}", "eval.report=false")
    assert test_metrics()["evaluated_with"] == own["evaluated_with"]
    # Figures made without a bootstrap gain intervals from a retest with one: nothing is lost.
    without = json.loads(path.read_text())
    figures = without["runs"][0]["test_metrics"]
    figures["evaluated_with"] |= {"eval.bootstrap": 0, "eval.confidence": None, "seed": None}
    figures["intervals"] = dict.fromkeys(figures["intervals"])
    path.write_text(json.dumps(without))
    main_runner("task=test", f"ckpt={run}", "eval.report=false")
    assert test_metrics()["intervals"] == own["intervals"] and test_metrics()["evaluated_with"] == own["evaluated_with"]
