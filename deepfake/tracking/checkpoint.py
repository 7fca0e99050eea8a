"""Checkpoint files that survive crashes and never run code when read.

Every write goes to a temp file beside the target, is flushed and fsynced, then renamed over the
target with ``os.replace`` (atomic on POSIX), and finally the directory is fsynced so the rename
itself survives a power cut. A reader therefore sees either the old file or the new one, never a
half-written mix.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import pickle
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from deepfake.errors import CheckpointError, ConfigError, find_in_chain

CHECKPOINT_FORMAT = "deepfake-checkpoint/1"

# A temp is named ".<target>.tmp.<host>.<pid>.<token>": hidden from globs like "*.pth", tied to its
# target for humans, and carrying the writer's identity so remove_stale_temps can tell a leftover
# of a killed process from a file that a live writer is still filling.
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "unknown-host"
_TEMP_PATTERN = re.compile(r"^\.(?P<target>.+)\.tmp\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}$")

# A pid is only meaningful on its own host, and pids get reused, so liveness alone cannot clear
# every leftover. A live writer keeps touching its temp while it writes and renames it seconds
# later, so a temp untouched for a day is abandoned whoever wrote it. If a writer was merely
# suspended that long, removing its temp only makes its own os.replace fail: the target is intact.
STALE_TEMP_AGE_S = 24 * 3600


def temp_path(path: Path) -> Path:
    """A unique temp name beside ``path`` that remove_stale_temps recognises once its writer is gone."""
    return path.with_name(f".{path.name}.tmp.{HOST}.{os.getpid()}.{secrets.token_hex(4)}")


def is_temp(name: str) -> bool:
    """Whether a file name is one :func:`temp_path` gives: a write in progress, or a killed writer's leftover."""
    return _TEMP_PATTERN.match(name) is not None


def _is_out_of_space(error: BaseException) -> bool:
    # torch.save reports a failed write as a RuntimeError whose context is the OSError, so the whole
    # chain has to be searched.
    return find_in_chain(error, lambda e: isinstance(e, OSError) and e.errno == errno.ENOSPC) is not None


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        # Some filesystems (network mounts, FUSE) cannot fsync a directory; the rename already
        # happened, so reporting a failure here would be a lie about the file's state.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(descriptor)


# A place the user chose that cannot be written: no permission, a read-only disk.
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def make_folder(folder: str | os.PathLike[str], what: str) -> Path:
    """``folder`` made (with its parents) for ``what``; where none can be (a file in the way, no
    permission, a read-only disk) one line says so instead of mkdir's traceback."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{what}: cannot make the folder {folder} ({error.strerror or error}); "
                          "give a folder you can write to") from None  # fmt: skip
    return folder


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path`` for a writer that wants a file name (an exporter); when the
    block completes the temp is fsynced and renamed over ``path``, otherwise it is removed."""
    path = Path(path)
    make_folder(path.parent, str(path))
    temp = temp_path(path)
    try:
        yield temp
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
    except BaseException as error:  # KeyboardInterrupt too: never leave a temp behind
        with contextlib.suppress(OSError):  # a read-only folder refuses even this; the first error matters
            temp.unlink(missing_ok=True)
        if _is_out_of_space(error):
            raise CheckpointError(
                f"no space left on device while writing {path}; the previous version was kept: free some disk "
                f"space and {_how_to_go_on(path)}"
            ) from error
        if isinstance(error, OSError) and error.errno in _UNWRITABLE:
            raise ConfigError(f"cannot write {path} ({error.strerror}); give a folder you can write to") from error
        if isinstance(error, OSError) and error.errno == errno.EISDIR:  # export.output=<a folder>.onnx
            raise ConfigError(f"cannot write {path}: a folder of that name is there; give a file name") from error
        raise
    _fsync_directory(path.parent)


def _how_to_go_on(path: Path) -> str:
    """After a full disk: a training run's checkpoint beside a last.pth resumes from it (the training
    done so far kept); anything else is written again by running again."""
    if path.name in ("best.pth", "last.pth") and (path.parent / "last.pth").is_file():
        return f"resume with: python scripts/main.py resume={path.parent}"
    return "run again"


@contextmanager
def _atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` only when the block completes."""
    with atomic_path(path) as temp, open(temp, "xb") as handle:
        yield handle


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` ``obj`` to ``path`` so that a crash leaves the previous file intact."""
    import torch  # here: the registry and the run-dir lock use this module, scripts/main.py before Hydra starts

    with _atomic_file(Path(path)) as handle:
        torch.save(obj, handle)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (JSON, CSV, YAML)."""
    with _atomic_file(Path(path)) as handle:
        handle.write(text.encode("utf-8"))


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy the bytes of ``src`` to ``dst`` atomically; a missing ``src`` is a CheckpointError."""
    source = Path(src)
    if not source.is_file():
        raise CheckpointError(f"cannot copy {source}: the file does not exist")
    with open(source, "rb") as reader, _atomic_file(Path(dst)) as handle:
        shutil.copyfileobj(reader, handle)


def process_is_alive(host: str, pid: int) -> bool:
    """Whether ``pid`` runs on ``host`` (a HOST value); True for other hosts, whose processes are unseen."""
    if host != HOST:
        return True  # cannot see another machine's processes; leave it to the age rule
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # the process exists but belongs to another user
    return True


def stale_temps(directory: str | os.PathLike[str], *, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """The temps of killed writers in ``directory`` (task=prune lists them before removing anything).

    A temp is stale when its writer (same host) is no longer running, or when nothing has touched
    it for ``max_age_s`` seconds. Files that do not follow the temp naming scheme are never listed.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    stale: list[Path] = []
    now = time.time()
    for candidate in folder.iterdir():
        match = _TEMP_PATTERN.match(candidate.name)
        if match is None or not candidate.is_file():
            continue
        try:
            age_s = now - candidate.stat().st_mtime
        except FileNotFoundError:
            continue  # its writer just renamed or removed it
        if age_s > max_age_s or not process_is_alive(match["host"], int(match["pid"])):
            stale.append(candidate)
    return stale


def remove_stale_temps(directory: str | os.PathLike[str], *, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove the :func:`stale_temps` of ``directory``; return the paths removed."""
    removed = stale_temps(directory, max_age_s=max_age_s)
    for temp in removed:
        temp.unlink(missing_ok=True)
    return removed


def load_checkpoint(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by this project, on the CPU, without ever unpickling code; with ``mmap``
    its tensors are mapped from the file, read only when used."""
    file = _checkpoint_file(path)
    return _unpickled(file, file, mmap=mmap)


def load_checkpoint_and_sha256(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """:func:`load_checkpoint` and the sha256 of the very bytes it was read from. Hashing the path again
    later raced with a promotion replacing the file: an export then vouched for a checkpoint its graph
    did not come from. The file is read once, so it is in memory twice for a moment (as bytes, as tensors)."""
    file = _checkpoint_file(path)
    try:
        data = file.read_bytes()
    except OSError as error:
        raise CheckpointError(f"checkpoint {file} cannot be read: {error.strerror}") from error
    return _unpickled(io.BytesIO(data), file, mmap=False), hashlib.sha256(data).hexdigest()


def _checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """``path`` when it can be a checkpoint; an .onnx or .json given instead is told apart in one line."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file} does not exist; check the path")
    if file.suffix.lower() == ".onnx":  # torch would call it damaged or unsafe
        raise CheckpointError(f"{file} is an ONNX export; this needs a .pth checkpoint (a run dir, or its "
                              "best.pth); task=predict scores ONNX models")  # fmt: skip
    if file.suffix.lower() == ".json":  # model.json beside an export: torch would call it damaged or unsafe
        raise CheckpointError(f"{file} is a JSON file, not a checkpoint; give a .pth checkpoint (a run dir, or its "
                              "best.pth), or for task=predict the model.onnx it describes")  # fmt: skip
    return file


def _unpickled(source: Path | IO[bytes], file: Path, *, mmap: bool) -> dict[str, Any]:
    """``source`` (the file, or its bytes) through torch.load(weights_only=True); ``file`` names it in errors."""
    import torch

    try:
        checkpoint = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        # torch reports a damaged pickle and a forbidden object (one that would run code) alike.
        raise CheckpointError(
            f"checkpoint {file} was refused: it is damaged or holds objects other than tensors and "
            "plain containers (loading those could run code); use a checkpoint written by this project"
        ) from error
    except OSError as error:
        raise CheckpointError(f"checkpoint {file} cannot be read: {error.strerror}") from error
    except Exception as error:  # a damaged file fails in many ways (RuntimeError, KeyError, EOFError)
        raise CheckpointError(
            f"checkpoint {file} cannot be read ({type(error).__name__}); it is truncated or not a torch file"
        ) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{file} is not a deepfake checkpoint (no format {CHECKPOINT_FORMAT!r}); "
            "pass a best.pth or last.pth written by this project"
        )
    return checkpoint
