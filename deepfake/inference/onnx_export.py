"""Export a detector to ONNX: RGB in [0, 1] at img_size in, p(fake) out, checked with onnxruntime.

The graph holds the whole decision except resizing: normalisation, the network and the temperature,
so a consumer only resizes, crops and scales pixels to [0, 1]. The file appears only once
onnxruntime has reproduced the PyTorch model on random and real images at batch 1 and batch 8;
a ``model.json`` sidecar says how to feed it and how to read its output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfake.data.image_files import ImageFileDataset
from deepfake.data.images import DECODE_RULES
from deepfake.data.manifest import file_sha256
from deepfake.data.synthetic_faces import render_sample
from deepfake.data.transforms import build_eval_transform, framing_rules
from deepfake.errors import ConfigError, DataError, ExportError
from deepfake.inference.detector import Detector
from deepfake.tracking.checkpoint import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "deepfake-onnx/1"
INPUT_NAME, OUTPUT_NAME = "image", "p_fake"
VERIFY_BATCHES = (1, 8)
# The graph's input is pixels in [0, 1]; normalisation happens inside, so the loader must not normalise.
IDENTITY_NORMALISATION = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


class FakeProbability(torch.nn.Module):
    """The exported graph: ``sigmoid(detector((image - mean) / std) / temperature)``, shape (B,)."""

    def __init__(self, detector: torch.nn.Module, mean, std, temperature: float = 1.0) -> None:
        super().__init__()
        self.detector = detector.eval()
        # (x - mean) / std in this order, as torchvision's Normalize computes it.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.temperature = float(temperature)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logit = self.detector((image - self.mean) / self.std).reshape(-1)
        return torch.sigmoid(logit / self.temperature)


@dataclass
class Verification:
    """Max |p_onnx - p_torch| per (input kind, batch size); ``passed`` when all are within tolerance."""

    differences: dict[str, float]
    tolerance: float

    @property
    def max_difference(self) -> float:
        return max(self.differences.values())

    @property
    def passed(self) -> bool:
        return self.max_difference <= self.tolerance


def onnx_modules():
    """onnx and onnxruntime, or a one-line ConfigError saying which extra installs them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as err:
        raise ConfigError(f'ONNX needs {err.name}, which is not installed; run: pip install -e ".[export]"') from None
    return onnxruntime


def open_session(onnxruntime, path: str | os.PathLike, providers: list[str]):
    """An onnxruntime session using as many threads as torch does (OMP_NUM_THREADS and the user's
    torch.set_num_threads apply alike), without busy-waiting between runs: ORT's spinning threads
    otherwise take cores from the DataLoader workers feeding it; on a loaded 2-core machine a
    prediction was seen to stall for minutes."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)


def export_onnx(
    detector: Detector,
    output: str | os.PathLike,
    real_images: torch.Tensor,
    *,
    tolerance: float = 1e-4,
    opset: int | None = None,
) -> Verification:
    """Write ``output`` (+ its ``.json`` sidecar) for a PyTorch ``detector``; ``real_images`` are
    (N, 3, S, S) in [0, 1] at the detector's img_size, N >= 1 (repeated up to the largest batch).

    Raises ExportError, leaving no new file behind, when onnxruntime disagrees beyond ``tolerance``.
    """
    onnxruntime = onnx_modules()
    if detector.kind != "pytorch":
        raise ConfigError(f"ckpt={detector.source} is already an ONNX file; export a .pth checkpoint")
    output = Path(output)
    preprocess = detector.preprocess
    graph = FakeProbability(
        detector.model, preprocess["mean"], preprocess["std"], detector.operating_point.temperature
    ).eval()
    with atomic_path(output) as temp:  # a refused export raises inside: the temp goes, nothing replaced
        with _quiet_version_conversion():
            _write_graph(graph, temp, int(preprocess["img_size"]), opset)
        _check_opset(temp, opset)
        session = open_session(onnxruntime, temp, ["CPUExecutionProvider"])
        verification = verify(session, graph, real_images, tolerance)
        if not verification.passed:
            raise ExportError(
                f"export to {output} refused: onnxruntime differs from PyTorch by {verification.max_difference:.2e} "
                f"(> export.tolerance={tolerance:g}) on {_worst(verification)}; no file written"
            )
    atomic_write_text(sidecar_path(output), json.dumps(sidecar(detector, output, verification, onnxruntime), indent=2))
    return verification


def _write_graph(graph: FakeProbability, path: Path, size: int, opset: int | None) -> None:
    # An example batch of 2: with 1, the exporter could specialise the batch axis to a constant.
    example = torch.rand(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad():
            torch.onnx.export(
                graph, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={"image": {0: batch}}, opset_version=opset, dynamo=True, external_data=False,
                verbose=False,
            )  # fmt: skip
    except torch.onnx.errors.OnnxExporterError as err:
        # An operator without an ONNX translation: a limit of this backbone, not a bug here.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{type(graph.detector).__name__} cannot be exported to ONNX: {first}") from err


# The exporter translates to its own opset (18) and then tries to convert to a lower one asked for,
# logging each step, and a failed conversion with its traceback; _check_opset says in one line what
# was written, so those logs are kept below ERROR during an export.
VERSION_CONVERSION_LOGGERS = ("torch.onnx._internal.exporter._compat", "onnxscript.version_converter")


@contextlib.contextmanager
def _quiet_version_conversion():
    loggers = [logging.getLogger(name) for name in VERSION_CONVERSION_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _check_opset(path: Path, asked: int | None) -> None:
    """The exporter falls back to the opset it translates to (18) when it cannot convert the graph to
    the one asked for, with a warning in its log: ``export.opset=3`` wrote an opset-18 model."""
    import onnx  # the export extra, as onnxruntime

    written = next(entry.version for entry in onnx.load(str(path), load_external_data=False).opset_import
                   if entry.domain in ("", "ai.onnx"))  # fmt: skip
    if asked is not None and written != int(asked):
        raise ConfigError(f"export.opset={asked}: the exporter could only write opset {written} for this model; "
                          f"use export.opset={written} (or null for the exporter's default)")  # fmt: skip


def verification_images(paths: list[str] | None, preprocess: dict, count: int) -> torch.Tensor:
    """(N, 3, S, S) pixels in [0, 1] framed as the graph expects: the first ``count`` readable images of
    ``paths``, or, without paths, ``count`` faces of the synthetic set (half real, half fake)."""
    transform = build_eval_transform(preprocess["img_size"], interpolation=preprocess["interpolation"],
                                     **IDENTITY_NORMALISATION)  # fmt: skip
    if paths is None:
        rng = np.random.default_rng(0)
        faces = [render_sample(("real", "fake")[i % 2], int(preprocess["img_size"]), rng)[0] for i in range(count)]
        return torch.stack([transform(Image.fromarray(face)) for face in faces])
    dataset = ImageFileDataset(paths, transform)
    images, first_damage = [], None
    for index in range(len(dataset)):
        item = dataset[index]
        if not item["damaged"]:
            images.append(item["image"])
        elif first_damage is None:
            first_damage = f"{paths[index]}: {dataset.damage_reason(index)}"
        if len(images) == count:
            break
    if not images:
        raise DataError(f"export.verify_input: none of its {len(paths)} image(s) can be read (the first, "
                        f"{first_damage}); pass a folder of readable images")  # fmt: skip
    return torch.stack(images)


def verify(session, graph: FakeProbability, real_images: torch.Tensor, tolerance: float) -> Verification:
    """Compare onnxruntime with PyTorch on random pixels and on ``real_images`` at each batch size."""
    generator = torch.Generator().manual_seed(0)
    shape = real_images.shape[1:]
    differences = {}
    for batch in VERIFY_BATCHES:
        inputs = {
            "random": torch.rand(batch, *shape, generator=generator),
            "images": real_images[torch.arange(batch) % len(real_images)],
        }
        for kind, images in inputs.items():
            with torch.no_grad():
                expected = graph(images).numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
            differences[f"{kind}_batch{batch}"] = float(np.abs(got.reshape(-1) - expected).max())
    return Verification(differences, tolerance)


def _worst(verification: Verification) -> str:
    return max(verification.differences, key=verification.differences.get)


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    return Path(onnx_path).with_suffix(".json")


def is_own_sidecar(path: Path) -> bool:
    """Whether ``path`` is a model.json an export wrote (its format and the keys that tie it to its graph),
    so replacing it loses nothing of the user's."""
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(written, dict) and written.get("format") == SIDECAR_FORMAT and {
        "onnx_file", "onnx_sha256", "source_checkpoint"} <= written.keys()  # fmt: skip


def is_own_onnx(path: Path) -> bool:
    """Whether ``path`` is a graph an export wrote: an ONNX model taking ``image`` and giving ``p_fake``
    (another ONNX model, or any other file, is the user's)."""
    import onnx  # the export extra, as onnxruntime
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except (OSError, DecodeError):
        return False
    return [item.name for item in graph.input] == [INPUT_NAME] and [item.name for item in graph.output] == [OUTPUT_NAME]


def sidecar(detector: Detector, onnx_path: Path, verification: Verification, onnxruntime) -> dict:
    """model.json: how to feed the graph, how to read its output, and where it came from."""
    preprocess, point, checkpoint = detector.preprocess, detector.operating_point, detector.checkpoint
    return {
        "format": SIDECAR_FORMAT,
        "onnx_file": onnx_path.name,
        "onnx_sha256": file_sha256(onnx_path),
        "input": {
            "name": INPUT_NAME, "shape": ["batch", 3, preprocess["img_size"], preprocess["img_size"]],
            "dtype": "float32", "layout": "NCHW", "channels": "RGB", "range": [0.0, 1.0],
        },
        "img_size": preprocess["img_size"],
        "decode": DECODE_RULES,
        "resize": framing_rules(preprocess["img_size"], preprocess["interpolation"]),
        "interpolation": preprocess["interpolation"],
        "normalisation": {"inside_graph": True, "mean": preprocess["mean"], "std": preprocess["std"]},
        "output": {"name": OUTPUT_NAME, "shape": ["batch"], "meaning": "p(fake), temperature applied"},
        "threshold": point.threshold,
        "threshold_policy": point.policy,
        "temperature": point.temperature,
        "labels": {"positive_class": "fake", "rule": "fake when p_fake >= threshold, else real",
                   "training_csv_real_label": detector.real_label},
        "backbone": checkpoint.get("model_spec"),
        # kind: "best" or "last" (a last.pth holds no threshold: its run's choice is in best.pth)
        "source_checkpoint": {"path": str(detector.source), "sha256": detector.source_sha256,
                              "kind": checkpoint.get("kind"), "run_name": checkpoint.get("run_name"),
                              "epoch": checkpoint.get("epoch")},
        "verification": {"onnxruntime": onnxruntime.__version__, "tolerance": verification.tolerance,
                         "max_abs_difference": verification.differences},
        "torch": torch.__version__,
    }  # fmt: skip
