"""ONNX export: onnxruntime reproduces PyTorch (CvT-13, a timm CNN, a timm ViT), dynamic batch,
normalisation and temperature inside the graph, the sidecar, refusal leaving nothing behind, and
scoring the .onnx through the same loader and loop as the .pth."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from deepfake.data.image_files import ImageFileDataset
from deepfake.data.manifest import file_sha256
from deepfake.data.synthetic_faces import render_sample
from deepfake.data.transforms import build_eval_transform
from deepfake.engine.evaluate import fake_probability, predict
from deepfake.errors import CheckpointError, ConfigError, ExportError
from deepfake.inference import load_detector
from deepfake.inference.onnx_export import (
    export_onnx,
    is_own_onnx,
    is_own_sidecar,
    sidecar_path,
    verification_images,
)
from deepfake.models import create_detector
from deepfake.tracking.checkpoint import CHECKPOINT_FORMAT, atomic_save

TEMPERATURE = 1.7


def write_checkpoint(path, name: str, size: int, *, temperature: float = TEMPERATURE, **kwargs):
    """A best.pth as training writes it, with a spread-out head so scores are not all 0.5."""
    torch.manual_seed(0)
    model = create_detector(name, **kwargs)
    torch.nn.init.normal_(model.get_classifier().weight, std=5.0)
    atomic_save({
        "format": CHECKPOINT_FORMAT, "kind": "best", "model": model.state_dict(),
        "model_spec": model.detector_spec, "preprocess": {**model.preprocess, "img_size": size},
        "labels": {"real_label": 1, "output": "logit of p(fake)"}, "threshold": 0.42,
        "threshold_policy": "youden", "temperature": temperature, "run_name": "unit", "epoch": 3,
    }, path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A test_resnet best.pth and its model.onnx + model.json, exported once for the tests below."""
    folder = tmp_path_factory.mktemp("exported")
    detector = load_detector(write_checkpoint(folder / "best.pth", "test_resnet", 32))
    verification = export_onnx(detector, folder / "model.onnx", verification_images(None, detector.preprocess, 8))
    return folder, verification


def check_export(folder, verification, name: str, size: int) -> None:
    assert set(verification.differences) == {"random_batch1", "images_batch1", "random_batch8", "images_batch8"}
    assert verification.passed and verification.max_difference < 1e-4
    meta = json.loads((folder / "model.json").read_text())
    assert meta["img_size"] == size and meta["input"]["shape"] == ["batch", 3, size, size]
    assert (meta["threshold"], meta["threshold_policy"], meta["temperature"]) == (0.42, "youden", TEMPERATURE)
    assert meta["backbone"]["name"] == name and meta["labels"]["positive_class"] == "fake"
    assert meta["source_checkpoint"]["sha256"] == file_sha256(folder / "best.pth")
    assert meta["source_checkpoint"]["kind"] == "best"
    assert meta["onnx_sha256"] == file_sha256(folder / "model.onnx")
    assert meta["verification"]["max_abs_difference"] == verification.differences


def test_a_timm_cnn_exports_and_onnxruntime_reproduces_it(exported):
    check_export(*exported, "test_resnet", 32)


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs", [("test_vit", {"img_size": 32}), ("cvt_13", {})])
def test_a_vit_and_cvt_13_export_and_onnxruntime_reproduces_them(tmp_path, name, kwargs):
    detector = load_detector(write_checkpoint(tmp_path / "best.pth", name, 32, **kwargs))
    verification = export_onnx(detector, tmp_path / "model.onnx", verification_images(None, detector.preprocess, 8))
    check_export(tmp_path, verification, name, 32)


def _scores(detector, paths):
    """p(fake) through the dataset, loader and scoring loop task=predict uses."""
    dataset = ImageFileDataset(paths, build_eval_transform(**_transform_args(detector.preprocess)))
    preds = predict(detector.model, DataLoader(dataset, batch_size=3), torch.device("cpu"))
    return fake_probability(preds.logits, detector.operating_point.temperature)


def _transform_args(preprocess):
    return {k: preprocess[k] for k in ("mean", "std", "interpolation")} | {"img_size": preprocess["img_size"]}


def test_onnx_scores_through_the_same_input_code_as_the_checkpoint(exported, tmp_path):
    folder, _ = exported
    rng = np.random.default_rng(1)
    paths = []
    for number, kind in enumerate(["real", "fake"] * 4):
        paths.append(tmp_path / f"face {number}.png")
        # 48 px, not 32: the resize happens in the shared transform, in front of either model.
        Image.fromarray(render_sample(kind, 48, rng)[0]).save(paths[-1])
    pytorch, onnx = load_detector(folder / "best.pth"), load_detector(folder / "model.onnx")

    expected, got = _scores(pytorch, paths), _scores(onnx, paths)

    assert onnx.kind == "onnx" and onnx.operating_point == pytorch.operating_point
    assert onnx.operating_point.threshold == 0.42 and onnx.operating_point.temperature == TEMPERATURE
    assert np.abs(got - expected).max() < 1e-4
    assert expected.std() > 0.05  # scores that differ from image to image: the comparison means something
    # p(fake) is sigmoid(logit / T): the graph carries the checkpoint's temperature.
    dataset = ImageFileDataset(paths, build_eval_transform(**_transform_args(pytorch.preprocess)))
    logits = predict(pytorch.model, DataLoader(dataset, batch_size=8), torch.device("cpu")).logits
    assert np.allclose(got, 1 / (1 + np.exp(-logits / TEMPERATURE)), atol=1e-4)
    # The ONNX model hands the loop the checkpoint's own logits: one rule and one calibration report.
    framed_for_onnx = ImageFileDataset(paths, build_eval_transform(**_transform_args(onnx.preprocess)))
    onnx_logits = predict(onnx.model, DataLoader(framed_for_onnx, batch_size=8), torch.device("cpu")).logits
    assert np.allclose(onnx_logits, logits, rtol=1e-3, atol=1e-3)
    # Real images for the export check go through the graph's own framing: pixels in [0, 1] at 32 px.
    framed = verification_images([str(p) for p in paths], pytorch.preprocess, 5)
    assert framed.shape == (5, 3, 32, 32) and framed.min() >= 0 and framed.max() <= 1


def test_a_saturated_onnx_score_is_a_large_finite_logit(tmp_path):
    """A hot temperature (or a sure model) saturates the graph's float32 p(fake) at 0 or 1: its logit was
    inf, and a labelled task=predict of the .onnx ended in scikit-learn's traceback."""
    detector = load_detector(write_checkpoint(tmp_path / "best.pth", "test_resnet", 32, temperature=1e-3))
    images = verification_images(None, detector.preprocess, 8)
    export_onnx(detector, tmp_path / "model.onnx", images)
    onnx = load_detector(tmp_path / "model.onnx").model
    graph_p = onnx.session.run(None, {onnx.session.get_inputs()[0].name: images.numpy()})[0].reshape(-1)
    assert (graph_p == 1.0).any() and set(np.unique(graph_p)) <= {0.0, 1.0}  # every score saturated
    logits = onnx(images).reshape(-1).numpy()
    assert np.isfinite(logits).all() and np.array_equal(logits > 0, graph_p > 0.5)
    assert np.array_equal(fake_probability(logits, 1e-3) > 0.5, graph_p > 0.5)


def _copy(folder, tmp_path):
    for name in ("best.pth", "model.onnx", "model.json"):
        shutil.copy(folder / name, tmp_path / name)


def test_a_refused_export_leaves_the_previous_files_untouched(exported, tmp_path, caplog, capfd):
    _copy(exported[0], tmp_path)
    caplog.set_level(logging.INFO)
    detector = load_detector(tmp_path / "best.pth")
    before = {name: (tmp_path / name).read_bytes() for name in ("model.onnx", "model.json")}

    # An opset the exporter cannot convert this graph to: it used to write opset 18 silently.
    with pytest.raises(ConfigError, match=r"export.opset=3: the exporter could only write opset \d+ for this model"):
        export_onnx(detector, tmp_path / "model.onnx", verification_images(None, detector.preprocess, 8), opset=3)
    # The one line above is the whole story: not the converter's own warnings and traceback.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "Traceback" not in capfd.readouterr().err
    # Float kernels differ in the last bits between PyTorch and onnxruntime: an impossible tolerance.
    with pytest.raises(ExportError, match=r"export to .*model.onnx refused: onnxruntime differs from PyTorch by "
                                          r"\S+ \(> export.tolerance=1e-12\) on \w+; no file written"):  # fmt: skip
        export_onnx(
            detector, tmp_path / "model.onnx", verification_images(None, detector.preprocess, 8), tolerance=1e-12
        )

    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "model.json", "model.onnx"]  # no temp left


def test_an_onnx_file_that_does_not_match_its_sidecar_is_refused(exported, tmp_path):
    _copy(exported[0], tmp_path)
    with open(tmp_path / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(CheckpointError, match="does not match its sidecar"):
        load_detector(tmp_path / "model.onnx")
    sidecar_path(tmp_path / "model.onnx").unlink()
    with pytest.raises(CheckpointError, match="its sidecar .*model.json is missing; export again"):
        load_detector(tmp_path / "model.onnx")


def test_a_sidecar_edited_to_another_img_size_is_refused_when_loaded(exported, tmp_path):
    """The checksum covers the graph, not model.json: onnxruntime's shape traceback came at the first batch."""
    _copy(exported[0], tmp_path)
    sidecar = sidecar_path(tmp_path / "model.onnx")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "img_size": 64}))
    with pytest.raises(CheckpointError, match=r"model.json says img_size=64, but .*model.onnx takes 32x32 images"):
        load_detector(tmp_path / "model.onnx")


@pytest.mark.parametrize(
    "edit",
    [{"img_size": "big"}, {"interpolation": "sharpest"}, {"labels": {}}, {"threshold": 1.5}, {"temperature": 0},
     {"threshold": "high"}],
    ids=["img_size", "interpolation", "labels", "threshold", "temperature", "threshold in words"],
)  # fmt: skip
def test_a_sidecar_with_a_field_edited_out_of_shape_is_refused_in_one_line(exported, tmp_path, edit):
    """A KeyError or ValueError traceback, or a threshold outside [0, 1] used as given."""
    _copy(exported[0], tmp_path)
    sidecar = sidecar_path(tmp_path / "model.onnx")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **edit}))
    with pytest.raises(CheckpointError, match=r"model.json: its fields are missing or out of range .*; export again"):
        load_detector(tmp_path / "model.onnx")


def test_an_export_knows_its_own_files_from_a_users(exported, tmp_path):
    """task=export replaces only an earlier export's graph and sidecar: export.output=user.onnx overwrote the
    user's own user.json silently."""
    import onnx
    from onnx import TensorProto, helper

    folder, _ = exported
    assert is_own_onnx(folder / "model.onnx") and is_own_sidecar(folder / "model.json")
    (tmp_path / "user.json").write_text(json.dumps({"format": "mine", "onnx_file": "user.onnx"}))
    (tmp_path / "notes.onnx").write_text("not a graph")
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("x", "y")]
    foreign = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", io[:1], io[1:]))
    onnx.save(foreign, tmp_path / "foreign.onnx")  # an ONNX model, but not one of ours
    assert not any(is_own_onnx(tmp_path / name) for name in ("notes.onnx", "foreign.onnx", "missing.onnx", "."))
    assert not any(is_own_sidecar(tmp_path / name) for name in ("user.json", "notes.onnx", "missing.json"))


@pytest.mark.parametrize("recorded", [{"kind": "last"}, {"path": "/runs/x/last.pth"}], ids=["kind", "older sidecar"])
def test_an_export_of_a_last_pth_is_known_as_one(exported, tmp_path, recorded):
    """A last.pth's export was told to "resume that run" for its missing threshold, as a run that stopped
    early: the sidecar records the kind (an older one without it is told by the checkpoint's name)."""
    _copy(exported[0], tmp_path)
    sidecar = sidecar_path(tmp_path / "model.onnx")
    meta = json.loads(sidecar.read_text())
    source = {key: value for key, value in meta["source_checkpoint"].items() if key != "kind"} | recorded
    sidecar.write_text(json.dumps({**meta, "source_checkpoint": source}))
    assert load_detector(tmp_path / "model.onnx").checkpoint["kind"] == "last"
    assert load_detector(exported[0] / "model.onnx").checkpoint["kind"] == "best"


def _export_of_a_copy(exported, tmp_path):
    """The export, its sidecar saying it came from the copy of best.pth in ``tmp_path``."""
    _copy(exported[0], tmp_path)
    sidecar = sidecar_path(tmp_path / "model.onnx")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "source_checkpoint": {**meta["source_checkpoint"],
                                                                 "path": str(tmp_path / "best.pth")}}))  # fmt: skip
    return meta["source_checkpoint"]["sha256"]


def test_an_export_whose_checkpoint_changed_since_says_so_when_loaded(exported, tmp_path, caplog):
    """After a resume or a promotion replaced the checkpoint, its earlier export scored with the old model
    and threshold without a word."""
    recorded = _export_of_a_copy(exported, tmp_path)
    caplog.set_level(logging.WARNING)
    load_detector(tmp_path / "model.onnx")
    assert not caplog.records  # the same bytes
    write_checkpoint(tmp_path / "best.pth", "test_resnet", 32, temperature=1.0)
    detector = load_detector(tmp_path / "model.onnx")
    [record] = caplog.records
    assert record.getMessage() == (
        f"{tmp_path / 'model.onnx'} is an export of {tmp_path / 'best.pth'} as it was (sha256 {recorded[:12]}...), "
        f"but that file has changed since (now {file_sha256(tmp_path / 'best.pth')[:12]}...): these are the earlier "
        f"model's scores and threshold; task=export ckpt={tmp_path / 'best.pth'} exports the current one"
    )
    assert detector.operating_point.temperature == TEMPERATURE  # still the export's own model, as it says
    caplog.clear()
    (tmp_path / "best.pth").unlink()  # an export copied away from its checkpoint: nothing to compare
    load_detector(tmp_path / "model.onnx")
    assert not caplog.records


def test_the_sidecar_names_the_bytes_the_graph_came_from(exported, tmp_path):
    """A promotion replacing best_model.pth during an export: the sidecar hashed the new file, vouching for a
    checkpoint the graph did not come from."""
    _copy(exported[0], tmp_path)
    loaded = file_sha256(tmp_path / "best.pth")
    detector = load_detector(tmp_path / "best.pth")
    write_checkpoint(tmp_path / "best.pth", "test_resnet", 32, temperature=1.0)  # replaced after loading
    export_onnx(detector, tmp_path / "model.onnx", verification_images(None, detector.preprocess, 8))
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["source_checkpoint"]["sha256"] == loaded != file_sha256(tmp_path / "best.pth")
    assert meta["temperature"] == TEMPERATURE


def _png_16_bit(path, samples: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG (Pillow writes none in colour): colour type 2 RGB, 6 RGBA."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = samples.shape[:2]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))  # fmt: skip


def test_the_decode_rules_in_model_json_state_the_operations_load_rgb_does(exported, tmp_path):
    """model.json said 16-bit samples are divided by 257 and rounded, and floats clipped: a 48-bit RGB PNG
    keeps Pillow's high byte instead (a quarter of its pixels off by 1), and floats are truncated."""
    from deepfake.data.images import load_rgb

    decode = json.loads((exported[0] / "model.json").read_text())["decode"]
    samples = np.random.default_rng(0).integers(0, 65536, (8, 8, 3), dtype=np.uint32)
    _png_16_bit(tmp_path / "rgb48.png", samples, 2)
    assert "16-bit colour PNGs (RGB, RGBA, grey with alpha)" in decode and "high byte (v >> 8)" in decode
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "rgb48.png")[0]), samples >> 8)
    Image.fromarray(np.full((4, 4), 12.7, np.float32)).save(tmp_path / "float.tif")
    assert "float samples (mode F) clipped to 0..255 and truncated toward zero" in decode
    assert (np.asarray(load_rgb(tmp_path / "float.tif")[0]) == 12).all()
    Image.fromarray(np.full((4, 4), 2 * 257 + 129, np.uint16)).save(tmp_path / "gray16.png")
    assert "16-bit and 32-bit integer samples (Pillow modes I;16 and I) divided by 257, clipped" in decode
    assert (np.asarray(load_rgb(tmp_path / "gray16.png")[0]) == 3).all()
