"""task=cam and train.do_cam end to end: overlays, gallery, TensorBoard grid, metrics, registry."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers import TINY_DATA, error_lines, only_dir

pytestmark = pytest.mark.slow

# layer2 of test_resnet is a 4x4 map on the tiny 32 px images (layer4, the default, is 1x1).
CAM = ["cam.target_layer=layer2", "cam.num_samples=6", "cam.road_percentiles=[50]"]


def test_do_cam_then_task_cam(tmp_path, main_runner):
    main_runner("train.do_cam=true", "train.do_test=false", "logger=tensorboard", *CAM)
    run = only_dir(tmp_path / "outputs" / "train")
    cam = run / "cam"
    panels = sorted(cam.glob("0*.png"))
    assert len(panels) == 6 and (cam / "grid.png").is_file()
    gallery = (cam / "index.html").read_text()
    assert all(p.name in gallery for p in panels)  # each caption names its PNG beside the page
    # Self-contained like every report: the panels embedded, nothing loaded from beside it.
    assert gallery.count('src="data:image/png;base64,') == 6 and 'src="0' not in gallery
    assert "Content-Security-Policy" in gallery
    # One writer for the whole run: training's scalars and then the CAM grid in the same event file.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = [EventAccumulator(str(path)).Reload() for path in (run / "tb").glob("events.out.tfevents.*")]
    assert "val/auc" in events.Tags()["scalars"] and "cam/overlays" in events.Tags()["images"]
    report = json.loads((cam / "metrics.json").read_text())
    assert report["split"] == "valid" and report["target_layer"] == "layer2" and report["run_name"] == run.name
    assert {"gradcam", "random", "mask_area"} <= set(report["localisation"])
    assert {"gradcam", "random"} <= set(report["faithfulness"])
    assert len(report["sanity"]) == 4
    entry = json.loads((tmp_path / "models" / "model_metadata.json").read_text())["runs"][0]
    assert entry["cam_metrics"]["pointing_game"] == report["localisation"]["gradcam"]["pointing_game"]
    assert "pointing_game_random" in entry["cam_metrics"] and "road_combined_random" in entry["cam_metrics"]

    # task=cam on the run dir, another method and target, metrics off: overlays only.
    main_runner("task=cam", f"ckpt={run}", "cam.method=gradcam++", "cam.target=real", "cam.metrics=false", *CAM)
    explained = only_dir(tmp_path / "outputs" / "cam") / "cam"
    assert len(list(explained.glob("0*.png"))) == 6 and not (explained / "metrics.json").exists()
    assert "explains real" in (explained / "index.html").read_text()

    # A mistake in cam.* is one ERROR line naming the key, exit status 2.
    result = main_runner("task=cam", f"ckpt={run}", "cam.method=nope", check=False)
    errors = error_lines(result)
    assert result.returncode == 2 and len(errors) == 1 and "cam.method='nope'" in errors[0]

    # Read under a wrong root, every image is a black stand-in: refused before any map, as task=test
    # does; the run's CAM metrics in the registry stay (they were replaced by flat maps' figures).
    wrong = tmp_path / "wrong_root"
    wrong.mkdir()
    result = main_runner("task=cam", f"ckpt={run}", f"dataset.root_dir={wrong}", *CAM, check=False)
    errors = error_lines(result)
    assert result.returncode == 2 and len(errors) == 1, result.stdout + result.stderr
    assert "32 of 32 images are damaged" in errors[0] and f"read under dataset.root_dir={wrong})" in errors[0]
    assert json.loads((tmp_path / "models" / "model_metadata.json").read_text())["runs"][0] == entry


def test_task_cam_records_only_best_pth_on_the_runs_own_data_and_refuses_a_nan_model(tmp_path, main_runner,
                                                                                    shared_data_dir):  # fmt: skip
    """task=cam replaced the registry's CAM metrics from a last.pth, a foreign CSV or another layer (the
    model card then showed them as best.pth's); a model scoring nan wrote a metrics.json of bare NaN."""
    cam = [*CAM, "cam.metric_samples=4"]
    main_runner("train.do_test=false", *cam)  # the run's own layer is layer2, from its config
    run = only_dir(tmp_path / "outputs" / "train")

    def cam_metrics() -> dict | None:
        return json.loads((tmp_path / "models" / "model_metadata.json").read_text())["runs"][0].get("cam_metrics")

    test = pd.read_csv(shared_data_dir / "synthetic" / TINY_DATA / "test.csv")
    test[test["label"] == 0].to_csv(tmp_path / "onlyfake.csv", index=False)
    others = {
        (f"ckpt={run / 'last.pth'}", "eval.threshold=0.5"): "of a last checkpoint",
        (f"ckpt={run}", "cam.split=test", f"dataset.test_csv={tmp_path / 'onlyfake.csv'}"): "onlyfake.csv under",
        (f"ckpt={run}", "cam.target_layer=layer3"): "at layer layer3 (its own: layer2)",
    }
    for overrides, said in others.items():
        result = main_runner("task=cam", *cam, *overrides)
        assert cam_metrics() is None and "keeps its CAM metrics" in result.stdout + result.stderr
        assert said in result.stdout + result.stderr, overrides
    main_runner("task=cam", f"ckpt={run}", *cam)
    own = cam_metrics()
    assert own["target_layer"] == "layer2" and own["split"] == "valid"

    checkpoint = torch.load(run / "best.pth", weights_only=True)
    checkpoint["model"]["fc.weight"] = torch.full_like(checkpoint["model"]["fc.weight"], float("nan"))
    torch.save(checkpoint, tmp_path / "nan.pth")
    before = {path.name for path in (tmp_path / "outputs" / "cam").iterdir()}
    result = main_runner("task=cam", f"ckpt={tmp_path / 'nan.pth'}", *cam, check=False)
    errors = error_lines(result)
    assert result.returncode == 2 and len(errors) == 1, result.stdout + result.stderr
    assert "the model's score of 6 of 6 images is not finite" in errors[0] and "valid.csv" in errors[0], errors
    [session] = [path for path in (tmp_path / "outputs" / "cam").iterdir() if path.name not in before]
    assert not (session / "cam").exists() and cam_metrics() == own
