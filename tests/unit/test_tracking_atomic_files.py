"""Atomic writes (deepfake.tracking.checkpoint): a failed or interrupted save keeps the previous file and
leaves no temp behind, a full disk is one line, and a killed writer's leftovers are recognised."""

from __future__ import annotations

import errno
import io
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from deepfake.errors import CheckpointError, ConfigError
from deepfake.tracking import checkpoint as ckpt
from deepfake.tracking.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_copy,
    atomic_path,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temps,
)


def _version(number: int) -> dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "version": number, "weights": torch.full((64,), float(number))}


class _FullDiskFile(io.FileIO):
    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def _full_disk_open(path: Path, mode: str) -> io.FileIO:
    return _FullDiskFile(path, mode.replace("b", ""))


def test_atomic_save_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "models" / "deep" / "best.pth"
    atomic_save(_version(1), path)
    assert load_checkpoint(path)["version"] == 1


def _fail_in_torch_save(monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = torch.save

    def save_half_then_crash(obj: Any, handle: Any) -> None:
        real_save(obj, handle)
        handle.seek(0)
        handle.truncate(17)
        raise RuntimeError("simulated crash while serialising")

    monkeypatch.setattr(torch, "save", save_half_then_crash)


def _fail_in_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(descriptor: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ckpt.os, "fsync", broken_fsync)


def _fail_in_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(ckpt.os, "replace", broken_replace)


def _interrupt_in_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted_replace(src: Any, dst: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.os, "replace", interrupted_replace)


@pytest.mark.parametrize(
    ("inject_failure", "expected"),
    [
        (_fail_in_torch_save, RuntimeError),
        (_fail_in_fsync, OSError),
        (_fail_in_replace, OSError),
        (_interrupt_in_replace, KeyboardInterrupt),
    ],
    ids=["write", "fsync", "replace", "ctrl-c"],
)
def test_failed_save_keeps_previous_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inject_failure: Any, expected: type[BaseException]
) -> None:
    path = tmp_path / "last.pth"
    atomic_save(_version(1), path)
    inject_failure(monkeypatch)

    with pytest.raises(expected):
        atomic_save(_version(2), path)

    monkeypatch.undo()
    assert load_checkpoint(path)["version"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]


def test_temp_file_is_written_beside_the_target_under_a_recognisable_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def recording_replace(src: Any, dst: Any) -> None:
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", recording_replace)
    atomic_save(_version(1), tmp_path / "best.pth")

    [(temp, target)] = renames
    assert temp.parent == target.parent == tmp_path
    assert temp.name.startswith(".best.pth.tmp.") and f".{os.getpid()}." in temp.name


@pytest.mark.parametrize("write", ["fsync", "write"])
def test_out_of_space_is_a_one_line_error_that_keeps_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    path = tmp_path / "last.pth"
    atomic_save(_version(1), path)
    if write == "fsync":

        def full_fsync(descriptor: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(ckpt.os, "fsync", full_fsync)
    else:  # torch.save itself hits the full disk and reports it as a RuntimeError
        monkeypatch.setattr(ckpt, "open", _full_disk_open, raising=False)

    with pytest.raises(CheckpointError) as caught:
        atomic_save(_version(2), path)

    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message and "no space left" in message and "previous version was kept" in message
    monkeypatch.undo()
    assert load_checkpoint(path)["version"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]


def test_out_of_space_applies_to_text_files_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model_metadata.json"
    atomic_write_text(path, '{"old": true}')
    monkeypatch.setattr(ckpt, "open", _full_disk_open, raising=False)

    with pytest.raises(CheckpointError, match="previous version was kept"):
        atomic_write_text(path, '{"new": true}')

    assert path.read_text() == '{"old": true}'
    assert sorted(os.listdir(tmp_path)) == ["model_metadata.json"]


def test_atomic_write_text_and_copy(tmp_path: Path) -> None:
    text_path = tmp_path / "notes.txt"
    atomic_write_text(text_path, "épreuve\n")
    assert text_path.read_bytes() == "épreuve\n".encode()

    source = tmp_path / "best.pth"
    source.write_bytes(os.urandom(300_000))
    destination = tmp_path / "models" / "best_model.pth"
    atomic_copy(source, destination)
    assert destination.read_bytes() == source.read_bytes()


def test_atomic_copy_of_missing_source_keeps_destination(tmp_path: Path) -> None:
    destination = tmp_path / "best_model.pth"
    destination.write_bytes(b"old")
    missing = tmp_path / "gone.pth"

    with pytest.raises(CheckpointError, match=re.escape(str(missing))):
        atomic_copy(missing, destination)

    assert destination.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["best_model.pth"]


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_remove_stale_temps_spares_live_writers_and_foreign_files(tmp_path: Path) -> None:
    host = ckpt.HOST
    dead = tmp_path / f".last.pth.tmp.{host}.{_dead_pid()}.0badc0de"
    live = tmp_path / f".last.pth.tmp.{host}.{os.getpid()}.12345678"
    remote_fresh = tmp_path / ".best.pth.tmp.otherbox.4242.abcdef01"
    remote_old = tmp_path / ".best.pth.tmp.otherbox.4243.abcdef02"
    unrelated = [tmp_path / "last.pth", tmp_path / ".last.pth.tmp.notes", tmp_path / "x.tmp.h.1.zz"]
    for path in [dead, live, remote_fresh, remote_old, *unrelated]:
        path.write_bytes(b"partial")
    day_ago = time.time() - 2 * ckpt.STALE_TEMP_AGE_S
    os.utime(remote_old, (day_ago, day_ago))

    removed = remove_stale_temps(tmp_path)

    assert sorted(removed) == sorted([dead, remote_old])
    assert sorted(tmp_path.iterdir()) == sorted([live, remote_fresh, *unrelated])
    assert remove_stale_temps(tmp_path / "missing") == []


def test_leftover_of_a_killed_writer_is_recognised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_in_replace(monkeypatch)
    monkeypatch.setattr(ckpt.Path, "unlink", lambda self, missing_ok=False: None)  # the kill skips cleanup
    with pytest.raises(OSError):
        atomic_save(_version(1), tmp_path / "last.pth")
    monkeypatch.undo()
    [leftover] = list(tmp_path.iterdir())

    assert remove_stale_temps(tmp_path, max_age_s=0.0) == [leftover]
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_made_for_an_output_is_one_line_naming_it(tmp_path):
    """export.output=<a file>/model.onnx, archive.dir=..., predict.output=...: mkdir's traceback before."""
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    target = blocker / "sub" / "model.onnx"
    refused = rf"{target}: cannot make the folder {blocker / 'sub'} \(Not a directory\); give a folder you can write to"
    with pytest.raises(ConfigError, match=refused), atomic_path(target) as temp:
        temp.write_bytes(b"never reached")
    from deepfake.tasks.predict import _output_file

    with pytest.raises(ConfigError, match=r"predict.output=.*: cannot make the folder"):
        _output_file(f"{blocker}/out")
    assert blocker.read_text() == "not a folder"


def test_the_folder_is_fsynced_after_the_rename_and_a_folder_that_cannot_be_is_no_error(tmp_path, monkeypatch):
    """The rename is durable only once the folder's entry is on disk; network mounts refuse a folder
    fsync with EINVAL, after the file is already in place, which must not be reported as a failure."""
    import stat

    synced, real_fsync = [], os.fsync

    def recording_fsync(descriptor):
        is_folder = stat.S_ISDIR(os.fstat(descriptor).st_mode)
        synced.append(("folder" if is_folder else "file", (tmp_path / "a.txt").exists()))
        real_fsync(descriptor)

    monkeypatch.setattr(ckpt.os, "fsync", recording_fsync)
    atomic_write_text(tmp_path / "a.txt", "first")
    assert synced == [("file", False), ("folder", True)]  # the data before the rename, the folder after it

    def folder_refuses(descriptor):
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(descriptor)

    monkeypatch.setattr(ckpt.os, "fsync", folder_refuses)
    atomic_write_text(tmp_path / "a.txt", "second")
    assert (tmp_path / "a.txt").read_text() == "second"
