"""task=predict, task=export and task=card end to end: a user's own folders, CSVs and photos scored
by a trained detector, equal to task=test on the same images, through PyTorch and onnxruntime."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, run_main
from helpers import TINY_DATA, error_lines, only_dir
from PIL import Image
from skimage import data as skimage_data

from deepfake.tracking.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values={"p_fake": [""]}, dtype={"path": str, "face": str})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data_dir):
    """A tiny two-phase run (tested at the end: its predictions.csv holds task=test's scores)."""
    root = tmp_path_factory.mktemp("predict_root")
    run_main(root, *TINY, data_dir=shared_data_dir)
    return root, only_dir(root / "outputs" / "train"), shared_data_dir


@pytest.fixture(scope="module")
def user_folder(trained, tmp_path_factory):
    """A user's folder: copies of test images under nested folders and odd names, a symlink, a
    grayscale JPEG, a truncated JPEG, an empty file and a text file. Returns it and copy -> original."""
    _, run, _ = trained
    test_paths = read(run / "predictions.csv")["path"].tolist()
    folder = tmp_path_factory.mktemp("user") / "my photos"
    names = ["a.jpg", "nested/b.JPG", "nested/deeper/c.jpeg", "with space/été ünï.jpg", "e.jpg", "f.jpg"]
    originals = {}
    for name, source in zip(names, test_paths):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / name)
        originals[str(folder / name)] = source
    os.symlink(test_paths[len(names)], folder / "nested" / "link.jpg")
    originals[str(folder / "nested" / "link.jpg")] = test_paths[len(names)]
    Image.open(test_paths[0]).convert("L").save(folder / "gray.jpg")
    (folder / "truncated.jpg").write_bytes(Path(test_paths[1]).read_bytes()[:300])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder, originals


@pytest.fixture(scope="module")
def folder_predicted(trained, user_folder):
    """task=predict on the user's folder with the run's best.pth (the global best): its output and log."""
    root, _, data = trained
    result = run_main(root, "task=predict", f"predict.input={user_folder[0]}", data_dir=data)
    (run_dir,) = [p.parent for p in (root / "outputs" / "predict").glob("*/predictions.csv")]
    return run_dir / "predictions.csv", result.stdout + result.stderr


def test_folder_rows_damaged_flags_and_scores_equal_task_test(trained, user_folder, folder_predicted):
    _, run, _ = trained
    folder, originals = user_folder
    predictions, log = folder_predicted

    out = read(predictions)
    images = {str(p) for p in folder.rglob("*") if p.is_file() or p.is_symlink()} - {str(folder / "notes.txt")}
    assert list(out.columns) == ["path", "p_fake", "label", "damaged"] and set(out["path"]) == images
    damaged = out.set_index("path")["damaged"]
    assert damaged[str(folder / "empty.png")] == "empty file (0 bytes)"
    assert damaged[str(folder / "truncated.jpg")].startswith("unreadable")
    scored = out[out["damaged"] == ""]
    assert len(scored) == len(images) - 2 and out.loc[out["damaged"] != "", "p_fake"].isna().all()
    threshold = load_checkpoint(run / "best.pth")["threshold"]  # chosen on validation, stored with the model
    assert (scored["label"] == np.where(scored["p_fake"] >= threshold, "fake", "real")).all()
    tested = read(run / "predictions.csv").set_index("path")["p_fake"]
    copies = scored[scored["path"].isin(originals)]
    assert len(copies) == len(originals)
    assert np.abs(copies["p_fake"].to_numpy() - tested[copies["path"].map(originals)].to_numpy()).max() < 1e-6
    assert "skipped (not images) │ 1: notes.txt" in log and "called fake" in log and "most fake-looking" in log
    assert sum("damaged image, not scored" in line for line in log.splitlines()) == 2


def test_labelled_csv_writes_the_task_test_metrics(trained):
    root, run, data = trained
    synthetic = data / "synthetic" / TINY_DATA

    run_main(root, "task=predict", f"predict.input={synthetic / 'test.csv'}",
             f"predict.root_dir={synthetic / 'real_vs_fake' / 'real-vs-fake'}", "predict.output=labelled/preds.csv",
             data_dir=data)  # fmt: skip

    predicted = json.loads((root / "labelled" / "preds.metrics.json").read_text())  # named after preds.csv
    tested = json.loads((run / "metrics_test.json").read_text())
    for key in ("auc", "ap", "eer", "accuracy", "f1", "log_loss", "n_samples", "n_damaged", "accuracy_at_0.5"):
        assert predicted[key] == pytest.approx(tested[key], abs=1e-6), key
    for key in ("confusion_matrix", "threshold_source", "threshold_policy", "decision_rule"):
        assert predicted[key] == tested[key], key
    assert predicted["scored_over"] == "images"
    for name, interval in tested["intervals"].items():  # the same bootstrap: same seed, same resamples
        assert predicted["intervals"][name] == pytest.approx(interval, abs=1e-6), name
    assert [row["tpr"] for row in predicted["tpr_at_fpr"]] == [row["tpr"] for row in tested["tpr_at_fpr"]]
    assert predicted["calibration"]["ece"] == pytest.approx(tested["calibration"]["ece"], abs=1e-6)
    preds, test_preds = read(root / "labelled" / "preds.csv"), read(run / "predictions.csv")
    assert (preds["path"] == test_preds["path"]).all() and (preds["true_label"] == test_preds["true_label"]).all()
    assert np.abs(preds["p_fake"] - test_preds["p_fake"]).max() < 1e-6


def test_each_predictions_file_keeps_its_own_metrics_and_never_a_stale_one(trained, user_folder):
    """Two outputs in one folder shared metrics_predict.json (the second replaced the first's), and an
    unlabelled run left the previous labelled run's metrics beside predictions they no longer describe."""
    root, _, data = trained
    synthetic = data / "synthetic" / TINY_DATA
    labelled = [
        f"predict.input={synthetic / 'test.csv'}",
        f"predict.root_dir={synthetic / 'real_vs_fake' / 'real-vs-fake'}",
    ]
    out = root / "kept"
    run_main(root, "task=predict", *labelled, f"predict.output={out}/a.csv", "predict.threshold=0.3", data_dir=data)
    run_main(root, "task=predict", *labelled, f"predict.output={out}/", data_dir=data)
    first, second = (
        json.loads((out / "a.metrics.json").read_text()),
        json.loads((out / "metrics_predict.json").read_text()),
    )
    assert first["predictions"] == str(out / "a.csv") and second["predictions"] == str(out / "predictions.csv")
    assert first["threshold_source"] == "predict.threshold" and first["decision_rule"]["threshold"] == 0.3
    assert second["threshold_source"] == "checkpoint"

    result = run_main(root, "task=predict", f"predict.input={user_folder[0]}", f"predict.output={out}/a.csv",
                      "predict.threshold=0.3", data_dir=data)  # fmt: skip
    assert not (out / "a.metrics.json").exists() and (out / "metrics_predict.json").exists()
    assert "threshold 0.3 from predict.threshold" in result.stdout + result.stderr


def test_missing_input_is_one_line_and_exit_2(trained, tmp_path):
    root, _, data = trained
    result = run_main(root, "task=predict", f"predict.input={tmp_path / 'nowhere'}", "predict.output=out/p.csv",
                      data_dir=data, check=False)  # fmt: skip
    assert result.returncode == 2 and len(error_lines(result)) == 1
    assert f"predict.input={tmp_path / 'nowhere'}: no such file or folder" in error_lines(result)[0]
    assert not (root / "out").exists()  # an input holding no image is the same one line (unit tests)


def test_an_input_without_one_readable_image_is_one_line_and_leaves_earlier_output(trained, user_folder, tmp_path):
    """A labelled CSV read under the wrong predict.root_dir: every image missing, yet exit 0, a
    predictions.csv without a score and metrics of black stand-ins (AUC 0.5) over the earlier ones."""
    root, _, data = trained
    synthetic = data / "synthetic" / TINY_DATA
    out = tmp_path / "out"
    labelled = [f"predict.input={synthetic / 'test.csv'}", f"predict.output={out}/"]
    run_main(root, "task=predict", *labelled, f"predict.root_dir={synthetic / 'real_vs_fake' / 'real-vs-fake'}",
             data_dir=data)  # fmt: skip
    before = {name: (out / name).read_bytes() for name in ("predictions.csv", "metrics_predict.json")}
    wrong = tmp_path / "wrong_root"
    wrong.mkdir()
    broken = tmp_path / "broken"  # a folder of only damaged files: the same one line
    broken.mkdir()
    shutil.copy(user_folder[0] / "empty.png", broken / "empty.png")
    shutil.copy(user_folder[0] / "truncated.jpg", broken / "truncated.jpg")
    cases = {
        (*labelled, f"predict.root_dir={wrong}"): (
            f"predict.input={synthetic / 'test.csv'}: none of its 32 image(s) can be read",
            f"(they were read under {wrong})",
        ),
        (f"predict.input={broken}", f"predict.output={out}/"): (
            f"predict.input={broken}: none of its 2 image(s) can be read",
            "empty file (0 bytes)",
        ),
    }
    for overrides, said in cases.items():
        result = run_main(root, "task=predict", *overrides, data_dir=data, check=False)
        errors = error_lines(result)
        assert result.returncode == 2 and len(errors) == 1, result.stdout + result.stderr
        assert all(part in errors[0] for part in said), errors
        assert {name: (out / name).read_bytes() for name in before} == before  # neither replaced nor removed
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_an_output_that_would_replace_an_input_or_another_runs_file_is_refused(trained, user_folder):
    """The input CSV, an input image and a training run's own predictions.csv were overwritten silently."""
    root, run, data = trained
    folder, _ = user_folder
    labelled = root / "mine.csv"
    pd.DataFrame({"path": [str(folder / "a.jpg")], "label": [1]}).to_csv(labelled, index=False)
    cases = {
        str(labelled): (labelled, "exists and is not an earlier predictions file"),  # the input CSV itself
        str(folder / "a.jpg"): (folder / "a.jpg", "exists and is not an earlier predictions file"),
        f"{run}/": (run / "predictions.csv", "is inside another run's dir"),
    }
    for output, (kept, said) in cases.items():
        before = kept.read_bytes()
        result = run_main(root, "task=predict", f"predict.input={labelled}", f"predict.output={output}",
                          data_dir=data, check=False)  # fmt: skip
        assert result.returncode == 2 and len(error_lines(result)) == 1 and said in error_lines(result)[0], output
        assert kept.read_bytes() == before
    again = root / "again" / "predictions.csv"  # an earlier predictions file of its own may be replaced
    for _ in range(2):
        run_main(root, "task=predict", f"predict.input={labelled}", f"predict.output={again}", data_dir=data)
    assert len(read(again)) == 1


def test_export_then_predict_with_onnx_equals_predict_with_pth(trained, user_folder, folder_predicted, tmp_path):
    root, run, data = trained
    folder, _ = user_folder

    run_main(root, "task=export", f"ckpt={run}", f"export.verify_input={folder}", data_dir=data)
    run_main(root, "task=predict", f"ckpt={run / 'model.onnx'}", f"predict.input={folder}",
             f"predict.output={tmp_path}/onnx.csv", data_dir=data)  # fmt: skip

    meta = json.loads((run / "model.json").read_text())
    assert max(meta["verification"]["max_abs_difference"].values()) < 1e-4
    pth, onnx = read(folder_predicted[0]), read(tmp_path / "onnx.csv")
    assert (pth["path"] == onnx["path"]).all() and (pth["damaged"] == onnx["damaged"]).all()
    assert np.nanmax(np.abs(pth["p_fake"] - onnx["p_fake"])) < 1e-4 and onnx["p_fake"].notna().sum() > 5

    # The latest epoch exported beside it keeps the best model's export: last.model.onnx, as its card.
    best_export = (run / "model.onnx").read_bytes()
    run_main(root, "task=export", f"ckpt={run / 'last.pth'}", data_dir=data)
    assert (run / "model.onnx").read_bytes() == best_export and json.loads((run / "model.json").read_text()) == meta
    assert json.loads((run / "last.model.json").read_text())["source_checkpoint"]["path"] == str(run / "last.pth")

    # Checked on a Kaggle-layout CSV, its paths under export.root_dir (there was no way to give its root).
    csv = data / "synthetic" / TINY_DATA / "test.csv"
    checked = run_main(root, "task=export", f"ckpt={run}", f"export.verify_input={csv}",
                       f"export.root_dir={csv.parent / 'real_vs_fake' / 'real-vs-fake'}",
                       f"export.output={tmp_path / 'csv_checked.onnx'}", data_dir=data)  # fmt: skip
    assert "checking on 8 given image(s)" in checked.stdout + checked.stderr


def test_model_card_beside_best_pth_follows_promotion_and_task_card(trained):
    root, run, data = trained
    card = (run / "model_card.md").read_text()
    tested = json.loads((run / "metrics_test.json").read_text())
    assert f"| auc | {tested['auc']:.4f} |" in card and "sha256" in card and "## Ethics, consent and access" in card
    assert (root / "models" / "model_card.md").read_text() == card  # promoted with its card

    run_main(root, "task=card", data_dir=data)  # the global best, found through the registry

    regenerated = (root / "models" / "model_card.md").read_text()
    assert f"run dir | {run} |" in regenerated and f"| auc | {tested['auc']:.4f} |" in regenerated


def test_face_crop_on_photos_with_cam_overlays(trained, tmp_path):
    root, _, data = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(photos / "astronaut.png")
    Image.fromarray(skimage_data.coffee()).save(photos / "coffee.jpg")

    run_main(root, "task=predict", f"predict.input={photos}", "predict.face_crop=true", "predict.cam=true",
             "cam.target_layer=layer2", f"predict.output={tmp_path}/out/predictions.csv", data_dir=data)  # fmt: skip

    out = read(tmp_path / "out" / "predictions.csv")
    assert list(out.columns) == ["path", "p_fake", "label", "damaged", "face", "box"]
    astronaut, coffee = out.iloc[0], out.iloc[1]
    x0, y0, x1, y1 = map(int, astronaut["box"].split())
    assert astronaut["face"] == "0" and 170 < (x0 + x1) / 2 < 280 and 60 < (y0 + y1) / 2 < 170
    assert 0 <= astronaut["p_fake"] <= 1 and astronaut["label"] in ("real", "fake")
    assert coffee["face"] == "" and np.isnan(coffee["p_fake"]) and coffee["damaged"] == ""
    assert sorted(p.name for p in (tmp_path / "out" / "cam").iterdir()) == [
        ".predict_overlays",
        "00000_astronaut_face0.png",
    ]

    # Predicting again into the same file replaces the overlays with its own: none for a photo without a
    # face (the astronaut's stayed beside predictions that no longer list it); a user's own file stays.
    (tmp_path / "out" / "cam" / "notes.txt").write_text("mine")
    run_main(root, "task=predict", f"predict.input={photos / 'coffee.jpg'}", "predict.face_crop=true",
             "predict.cam=true", f"predict.output={tmp_path}/out/predictions.csv",
             data_dir=data)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "out" / "cam").iterdir()) == [".predict_overlays", "notes.txt"]

    # A cam/ of the user's own holding files named as overlays: refused before scoring, never replaced.
    mine = tmp_path / "mine" / "cam" / "00001_holiday.png"
    mine.parent.mkdir(parents=True)
    Image.fromarray(skimage_data.coffee()).save(mine)
    refused = run_main(root, "task=predict", f"predict.input={photos / 'coffee.jpg'}", "predict.cam=true",
                       f"predict.output={tmp_path}/mine/predictions.csv", data_dir=data, check=False)  # fmt: skip
    assert refused.returncode == 2 and "00001_holiday.png, ...) that no predict wrote" in error_lines(refused)[0]
    assert mine.is_file() and not (tmp_path / "mine" / "predictions.csv").exists()


def test_face_crop_metrics_say_what_they_are_over(trained, tmp_path):
    """Per face, a damaged photo and one without a face are in no figure: the metrics said n_damaged 0."""
    root, _, data = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(photos / "astronaut.png")
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(photos / "plain.png")
    (photos / "empty.jpg").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("path,label\nphotos/astronaut.png,0\nphotos/empty.jpg,0\nphotos/plain.png,1\n")
    run_main(root, "task=predict", f"predict.input={tmp_path / 'labels.csv'}", "predict.face_crop=true",
             f"predict.output={tmp_path}/out/", data_dir=data)  # fmt: skip
    metrics = json.loads((tmp_path / "out" / "metrics_predict.json").read_text())
    assert {key: metrics[key] for key in ("scored_over", "n_samples", "n_images", "n_images_with_faces", "n_damaged",
                                          "n_without_face")} == {  # fmt: skip
        "scored_over": "faces", "n_samples": 1, "n_images": 3, "n_images_with_faces": 1, "n_damaged": 1,
        "n_without_face": 1,
    }  # fmt: skip


def test_a_predict_stopped_while_its_loader_workers_run_exits(trained, tmp_path):
    """Ctrl-C while workers load (what any error in the main process meets): the process waited at exit
    for ever on the workers, which ignore the SIGTERM multiprocessing ends them with."""
    import subprocess
    import sys
    import time

    import psutil

    root, run, data = trained
    folder = tmp_path / "many"
    folder.mkdir()
    source = read(run / "predictions.csv")["path"].iloc[0]
    for number in range(4000):  # long enough to be caught scoring (hard links: no bytes copied)
        os.link(source, folder / f"{number:05d}.jpg")
    argv = [sys.executable, "scripts/main.py", f"paths.root_dir={root}", f"paths.data_dir={data}", "task=predict",
            f"ckpt={run}", f"predict.input={folder}", "predict.num_workers=2", "predict.batch_size=8",
            f"predict.output={tmp_path / 'p.csv'}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DEEPFAKE_ROOT": str(root)}
    proc = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[2], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while len(psutil.Process(proc.pid).children()) < 2:  # the two loader workers are up
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the process did not exit after Ctrl-C: it waits on its loader workers") from None
    # (multiprocessing's resource_sharer thread may print its own traceback on the way out: left alone)
    assert proc.returncode == 130 and "stopped by Ctrl-C (SIGINT)" in err, err
    assert not (tmp_path / "p.csv").exists()  # nothing half-written


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included), by relative path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def labelled_with_overlays(trained, tmp_path_factory):
    """A labelled predict with overlays (predictions.csv, metrics_predict.json, cam/), and a smaller labelled
    CSV whose predictions would differ from them: a refused run must leave the first output as it was."""
    root, _, data = trained
    synthetic = data / "synthetic" / TINY_DATA
    images = synthetic / "real_vs_fake" / "real-vs-fake"
    out = tmp_path_factory.mktemp("earlier") / "out"
    run_main(root, "task=predict", f"predict.input={synthetic / 'test.csv'}", f"predict.root_dir={images}",
             f"predict.output={out}/", "predict.cam=true", "cam.target_layer=layer2", data_dir=data)  # fmt: skip
    smaller = out.parent / "smaller.csv"
    pd.read_csv(synthetic / "test.csv").head(4).to_csv(smaller, index=False)
    return out, [f"predict.input={smaller}", f"predict.root_dir={images}"]


def refused_without_a_trace(trained, labelled_with_overlays, tmp_path, *overrides: str, said: str) -> None:
    """A copy of the earlier output, predicted into again with ``overrides``: one line, exit 2, nothing changed."""
    root, _, data = trained
    earlier, smaller = labelled_with_overlays
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    before = snapshot(out)
    assert len([name for name in before if name.startswith("cam/")]) > 1, before.keys()  # overlays to keep
    result = run_main(root, "task=predict", *smaller, f"predict.output={out}/", *overrides, data_dir=data,
                      check=False)  # fmt: skip
    errors = error_lines(result)
    assert result.returncode == 2 and len(errors) == 1 and said in errors[0], result.stdout + result.stderr
    assert snapshot(out) == before  # predictions, metrics and overlays neither replaced nor removed


@pytest.mark.parametrize(
    ("setting", "said"),
    [("cam.method=nosuch", "cam.method='nosuch'"), ("cam.target_layer=nosuch.layer", "cam.target_layer='nosuch.layer'"),
     ("cam.batch_size=0", "cam.batch_size")],
)  # fmt: skip
def test_a_bad_cam_setting_is_refused_before_anything_is_written(trained, labelled_with_overlays, tmp_path, setting,
                                                                 said):  # fmt: skip
    """Checked only at the overlays, it replaced predictions.csv and deleted the earlier overlays first."""
    refused_without_a_trace(trained, labelled_with_overlays, tmp_path, "predict.cam=true", setting, said=said)


def test_a_file_named_as_the_overlays_folder_is_refused_before_anything_is_written(trained, labelled_with_overlays,
                                                                                     tmp_path):  # fmt: skip
    """A file where cam/ goes failed with a traceback at the overlays, after predictions.csv was replaced."""
    root, _, data = trained
    earlier, smaller = labelled_with_overlays
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    shutil.rmtree(out / "cam")
    (out / "cam").write_text("my notes")
    before = snapshot(out)
    result = run_main(root, "task=predict", *smaller, f"predict.output={out}/", "predict.cam=true", data_dir=data,
                      check=False)  # fmt: skip
    assert result.returncode == 2 and error_lines(result) == [
        f"ERROR predict.output={out / 'predictions.csv'}: {out / 'cam'}, where its overlays go, exists and is not a "
        "folder; move it or give another predict.output"
    ], result.stdout + result.stderr
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "setting", ["eval.bootstrap=-1", "eval.confidence=2", "eval.tpr_at_fpr=[1.5]", "eval.ece_bins=0"]
)
def test_a_bad_eval_setting_is_refused_before_anything_is_written(trained, labelled_with_overlays, tmp_path, setting):
    """Checked only at the metrics, it replaced predictions.csv, then left the earlier metrics beside it."""
    refused_without_a_trace(trained, labelled_with_overlays, tmp_path, setting, said=setting.split("=")[0])


def predicted_into_itself(trained, user_folder, tmp_path) -> Path:
    """A folder of two photos predicted into itself with overlays: its predictions.csv and cam/."""
    root, _, data = trained
    folder = tmp_path / "d"
    folder.mkdir()
    for name in ("a.jpg", "e.jpg"):
        shutil.copy(user_folder[0] / name, folder / name)
    run_main(root, "task=predict", f"predict.input={folder}", f"predict.output={folder}/", "predict.cam=true",
             "cam.target_layer=layer2", data_dir=data)  # fmt: skip
    assert sorted(p.name for p in (folder / "cam").glob("*.png")) == ["00000_a.png", "00001_e.png"]
    return folder


def test_an_earlier_predicts_overlays_in_the_input_folder_are_no_input(trained, user_folder, tmp_path):
    """Predicted again into another output, the folder's cam/ overlays were scored as photos."""
    root, _, data = trained
    folder = predicted_into_itself(trained, user_folder, tmp_path)
    run_main(root, "task=predict", f"predict.input={folder}", f"predict.output={tmp_path}/other/", data_dir=data)
    assert read(tmp_path / "other" / "predictions.csv")["path"].tolist() == [str(folder / "a.jpg"),
                                                                             str(folder / "e.jpg")]  # fmt: skip


def test_a_rerun_without_cam_removes_the_earlier_overlays(trained, user_folder, tmp_path):
    """Predicted again into the same output without predict.cam, the overlays stayed beside predictions that
    no longer list them; a file of the user's there is not predict's to remove."""
    root, _, data = trained
    folder = predicted_into_itself(trained, user_folder, tmp_path)
    (folder / "cam" / "notes.txt").write_text("mine")
    run_main(root, "task=predict", f"predict.input={folder / 'a.jpg'}", f"predict.output={folder}/", data_dir=data)
    assert sorted(p.name for p in (folder / "cam").iterdir()) == ["notes.txt"]
    assert read(folder / "predictions.csv")["path"].tolist() == [str(folder / "a.jpg")]


def test_export_refuses_to_replace_a_file_that_is_not_an_earlier_exports(trained, tmp_path):
    """export.output=user.onnx overwrote the user's own user.json silently; an earlier export is replaced."""
    root, run, data = trained
    (tmp_path / "user.json").write_text('{"mine": true}')
    (tmp_path / "notes.onnx").write_text("not a graph")
    (tmp_path / "folder.json").mkdir()  # refused before the graph is written, not after
    for output, kept, said in (
        ("user.onnx", "user.json", f"{tmp_path / 'user.json'}, where its sidecar goes, exists and is not an earlier "
                                   "export's sidecar"),
        ("notes.onnx", "notes.onnx", "notes.onnx exists and is not an earlier export's graph"),
        ("folder.onnx", "folder.json", f"cannot write {tmp_path / 'folder.json'}: a folder of that name is there"),
    ):  # fmt: skip
        before = snapshot(tmp_path)
        result = run_main(root, "task=export", f"ckpt={run}", f"export.output={tmp_path / output}", data_dir=data,
                          check=False)  # fmt: skip
        assert result.returncode == 2 and len(error_lines(result)) == 1, result.stdout + result.stderr
        assert said in error_lines(result)[0] and snapshot(tmp_path) == before, kept

    for _ in range(2):  # the second replaces the first's graph and sidecar
        run_main(root, "task=export", f"ckpt={run}", f"export.output={tmp_path / 'ours.onnx'}", data_dir=data)
    assert json.loads((tmp_path / "ours.json").read_text())["onnx_file"] == "ours.onnx"


def test_a_last_pth_and_its_export_point_to_best_pth_for_the_threshold(trained, user_folder, tmp_path):
    """Exporting a finished run's last.pth warned that its training stopped before choosing a threshold, and
    predict on the export said to resume that run: a last.pth never holds one, its run's is in best.pth."""
    root, run, data = trained
    exported = run_main(root, "task=export", f"ckpt={run / 'last.pth'}", f"export.output={tmp_path / 'last.onnx'}",
                        data_dir=data)  # fmt: skip
    log = exported.stdout + exported.stderr
    assert "is a last.pth, which holds no decision threshold" in log and "stopped before choosing" not in log
    assert json.loads((tmp_path / "last.json").read_text())["source_checkpoint"]["kind"] == "last"

    result = run_main(root, "task=predict", f"ckpt={tmp_path / 'last.onnx'}", f"predict.input={user_folder[0]}",
                      f"predict.output={tmp_path}/p.csv", data_dir=data, check=False)  # fmt: skip
    errors = error_lines(result)
    assert result.returncode == 2 and len(errors) == 1, result.stdout + result.stderr
    assert f"is an export of {run / 'last.pth'}" in errors[0] and "best.pth" in errors[0]
    assert "resume that run" not in errors[0] and not (tmp_path / "p.csv").exists()
