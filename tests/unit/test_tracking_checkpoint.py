"""Checkpoints loaded safely: what a weights-only load keeps, and the one-line errors for files that are
not a checkpoint of this project (deepfake.tracking.checkpoint; its atomic writes: test_tracking_atomic_files.py)."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from deepfake.errors import CheckpointError
from deepfake.tracking.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_save,
    load_checkpoint,
)


def _assert_same(expected: Any, actual: Any) -> None:
    assert type(actual) is type(expected)
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and torch.equal(actual, expected)
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            _assert_same(expected[key], actual[key])
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for left, right in zip(expected, actual, strict=True):
            _assert_same(left, right)
    else:
        assert actual == expected


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch '{self.marker}'",))


def test_training_state_round_trips_under_weights_only(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "phase": "finetune",
        "best_metric": 0.875,
        "threshold": None,
        "resumable": True,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "cuda": []},
        "nested": {"img_size": (224, 224), "mean": [0.5, 0.5, 0.5], "deeper": {"flag": False}},
    }
    assert state["rng"]["torch"].dtype == torch.uint8
    path = tmp_path / "last.pth"

    atomic_save(state, path)
    loaded = load_checkpoint(path)

    _assert_same(state, loaded)
    restored = torch.optim.AdamW(model.parameters(), lr=1e-3)
    restored.load_state_dict(loaded["optimizer"])
    torch.set_rng_state(loaded["rng"]["torch"])
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_code_carrying_pickle_is_refused_without_running(tmp_path: Path, container: str) -> None:
    # Prove the payload is live: plain pickle runs it.
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()

    marker = tmp_path / "pwned_marker"
    path = tmp_path / "evil.pth"
    evil = {"format": CHECKPOINT_FORMAT, "model": _Payload(marker)}
    if container == "torch.save":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil, protocol=2))

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)

    assert not marker.exists()
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "refused" in message


@pytest.mark.parametrize("content", [{"state_dict": {"w": torch.zeros(2)}}, torch.zeros(3), {"format": "other/1"}])
def test_foreign_torch_file_is_not_a_deepfake_checkpoint(tmp_path: Path, content: Any) -> None:
    path = tmp_path / "foreign.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="is not a deepfake checkpoint") as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "last.pth"
    with pytest.raises(CheckpointError, match="does not exist") as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_file_is_a_one_line_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "last.pth"
    atomic_save({"format": CHECKPOINT_FORMAT, "weights": torch.ones(64)}, path)
    whole = path.read_bytes()
    path.write_bytes({"truncated": whole[: len(whole) // 2], "garbage": b"not a checkpoint", "empty": b""}[damage])

    with pytest.raises(CheckpointError, match=r"cannot be read|damaged") as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_find_in_chain_walks_causes_and_contexts_without_looping() -> None:
    from deepfake.errors import find_in_chain

    root = OSError(28, "No space left on device")
    try:
        try:
            raise root
        except OSError as err:
            raise RuntimeError("write failed") from err
    except RuntimeError as wrapped:
        outer = wrapped
    assert find_in_chain(outer, lambda e: isinstance(e, OSError)) is root
    assert find_in_chain(outer, lambda e: isinstance(e, KeyError)) is None
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a  # a cycle must not hang
    assert find_in_chain(a, lambda e: False) is None


def test_an_onnx_export_where_a_checkpoint_is_wanted_is_named_as_such(tmp_path):
    """ckpt=<model.onnx> for task=test, card or init_from: 'damaged or holds objects other than tensors' before."""
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"\x08\x07onnx graph bytes")
    with pytest.raises(CheckpointError, match=rf"{exported} is an ONNX export; this needs a .pth checkpoint"):
        load_checkpoint(exported)
    sidecar = tmp_path / "model.json"
    sidecar.write_text('{"format": 1}')
    with pytest.raises(CheckpointError, match=rf"{sidecar} is a JSON file, not a checkpoint; .* the model.onnx"):
        load_checkpoint(sidecar)


def test_every_rng_stream_comes_back_through_a_weights_only_checkpoint(tmp_path):
    """Python's, numpy's and torch's draws after a restore repeat those after the capture (a stream left
    out would make a resumed augmentation that draws from it differ, silently)."""
    import numpy as np

    from deepfake.engine.reproducibility import capture_rng_state, restore_rng_state

    def draws():
        return (
            random.random(),
            random.gauss(0, 1),
            float(np.random.rand()),
            float(np.random.randn()),
            float(torch.rand(1)),
        )

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.randn()  # a cached gaussian in each, as mid-run
    atomic_save({"format": CHECKPOINT_FORMAT, "rng": capture_rng_state()}, tmp_path / "last.pth")
    expected = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "last.pth")["rng"])
    assert draws() == expected
